# Reference values of the pseudo-confidence envelope of metafor's qqnorm.rma.uni
# (envelope = TRUE, seeded): the lower and upper envelope lines exactly as metafor draws
# them, captured by tracing graphics' lines.default while qqnorm() plots to a null device.
# smooth = TRUE (metafor's default: the lines through stats::supsmu) and FALSE, reps = 1000
# and 200, seeds 1234 and 7, bonferroni FALSE and TRUE; fits: dat.bcg log risk ratios with
# REML, FE, and a meta-regression on ablat. Also stats::supsmu itself (bass 0 and 5) on
# seeded random data with 13, 40 and 100 points and on data with tied x.
#
# Run: Rscript tests/data/metafor/qq_envelope.R   (R 4.2.2, metafor 3.8-1, jsonlite).
# Writes tests/data/metafor/qq_envelope.json.

suppressPackageStartupMessages({library(metafor); library(jsonlite)})

dat <- escalc("RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
captured <- list()
trace("lines.default", tracer = quote(captured[[length(captured) + 1]] <<- list(x = x, y = y)),
      print = FALSE, where = asNamespace("graphics"))
cases <- list()
fits <- list(REML = rma(yi, vi, data = dat, control = list(threshold = 1e-12)),
             FE = rma(yi, vi, data = dat, method = "FE"),
             ablat = rma(yi, vi, mods = ~ ablat, data = dat, control = list(threshold = 1e-12)))
settings <- list(list(reps = 1000, seed = 1234, bonferroni = FALSE, smooth = FALSE),
                 list(reps = 200, seed = 7, bonferroni = TRUE, smooth = FALSE),
                 list(reps = 1000, seed = 1234, bonferroni = FALSE, smooth = TRUE),
                 list(reps = 500, seed = 99, bonferroni = TRUE, smooth = TRUE))
pdf(NULL)
for (name in names(fits)) for (s in settings) {
  captured <- list()
  qqnorm(fits[[name]], envelope = TRUE, smooth = s$smooth, reps = s$reps, seed = s$seed,
         bonferroni = s$bonferroni)
  cases[[length(cases) + 1]] <- list(fit = name, reps = s$reps, seed = s$seed,
    bonferroni = s$bonferroni, smooth = s$smooth, tau2 = fits[[name]]$tau2,
    lower = captured[[1]], upper = captured[[2]])
}
invisible(dev.off())
untrace("lines.default", where = asNamespace("graphics"))
set.seed(2024)
smooths <- list()
for (n in c(13, 40, 100)) {
  x <- sort(rnorm(n)); y <- sin(2 * x) + rnorm(n, 0, 0.3)
  for (bass in c(0, 5)) {
    s <- supsmu(x, y, bass = bass)
    smooths[[length(smooths) + 1]] <- list(x = x, y = y, bass = bass, sx = s$x, sy = s$y)
  }
}
x <- c(1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9, 10); y <- rnorm(13)
s <- supsmu(x, y)
smooths[[length(smooths) + 1]] <- list(x = x, y = y, bass = 0, sx = s$x, sy = s$y)
writeLines(toJSON(list(data = data.frame(yi = c(dat$yi), vi = dat$vi, ablat = dat$ablat),
                       cases = cases, supsmu = smooths), digits = NA, auto_unbox = TRUE),
           "tests/data/metafor/qq_envelope.json")
