# Reference coordinates of the issue-16 plots: radial (x, y), qqnorm.rma.uni (x, y),
# baujat (x, y), labbe (x, y) of dat.bcg log odds ratios (REML and FE fits) and gosh on the
# first 6 studies (all 63 subsets, FE: k, estimate, I2 per subset, sorted by subset code).
#
# Run: Rscript tests/data/metafor/plots.R  (R 4.2.2, metafor 3.8-1, jsonlite).
# Writes tests/data/metafor/plots.json.
suppressPackageStartupMessages({library(metafor); library(jsonlite)})
dat <- escalc("OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
pdf(NULL)
out <- list(data = list(ai = dat.bcg$tpos, bi = dat.bcg$tneg, ci = dat.bcg$cpos,
                        di = dat.bcg$cneg, yi = c(dat$yi), vi = dat$vi))
for (method in c("REML", "FE")) {
  res <- rma(yi, vi, data = dat, method = method)
  r <- radial(res)
  q <- qqnorm(res, envelope = FALSE)
  b <- baujat(res)
  l <- labbe(rma(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg,
                 data = dat.bcg, method = method))
  out[[method]] <- list(estimate = c(res$beta), tau2 = res$tau2, se = res$se,
                        radial = list(x = r$x, y = r$y), qqnorm = list(x = q$x, y = q$y),
                        baujat = list(x = b$x, y = b$y), labbe = list(x = l$x, y = l$y))
}
sub <- dat[1:6, ]
g <- gosh(rma(yi, vi, data = sub, method = "FE"), progbar = FALSE)
code <- as.vector(g$incl %*% 2^(0:5))
o <- order(code)
out$gosh <- list(code = code[o], k = g$res$k[o], estimate = g$res$estimate[o],
                 I2 = g$res$I2[o])
exact <- function(x) {
  if (is.list(x)) return(lapply(x, exact))
  if (is.double(x)) {
    txt <- ifelse(is.na(x), "null", sprintf("%.17g", x))
    return(structure(if (length(x) == 1) txt else paste0("[", paste(txt, collapse = ", "),
                                                         "]"), class = "json"))
  }
  x
}
out$provenance <- paste0("tests/data/metafor/plots.R; ", R.version.string, "; metafor ",
                         as.character(packageVersion("metafor")))
writeLines(toJSON(exact(out), auto_unbox = TRUE, json_verbatim = TRUE, pretty = TRUE,
                  digits = NA), "tests/data/metafor/plots.json")
cat("wrote tests/data/metafor/plots.json\n")
