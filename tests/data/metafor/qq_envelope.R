# Reference values of the pseudo-confidence envelope of metafor's qqnorm.rma.uni
# (envelope = TRUE, seeded): the lower and upper envelope lines exactly as metafor draws
# them, captured by tracing graphics' lines.default while qqnorm() plots to a null device.
# smooth = FALSE (the unsmoothed quantile lines; metafor's default smooth = TRUE passes them
# through stats::supsmu, which fedsynth does not reproduce), reps = 1000 and 200, seeds 1234
# and 7, bonferroni FALSE and TRUE; fits: dat.bcg log risk ratios with REML, FE, and a
# meta-regression on ablat.
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
settings <- list(list(reps = 1000, seed = 1234, bonferroni = FALSE),
                 list(reps = 200, seed = 7, bonferroni = TRUE))
pdf(NULL)
for (name in names(fits)) for (s in settings) {
  captured <- list()
  qqnorm(fits[[name]], envelope = TRUE, smooth = FALSE, reps = s$reps, seed = s$seed,
         bonferroni = s$bonferroni)
  cases[[length(cases) + 1]] <- list(fit = name, reps = s$reps, seed = s$seed,
    bonferroni = s$bonferroni, tau2 = fits[[name]]$tau2,
    lower = captured[[1]], upper = captured[[2]])
}
invisible(dev.off())
untrace("lines.default", where = asNamespace("graphics"))
writeLines(toJSON(list(data = data.frame(yi = c(dat$yi), vi = dat$vi, ablat = dat$ablat),
                       cases = cases), digits = NA, auto_unbox = TRUE),
           "tests/data/metafor/qq_envelope.json")
