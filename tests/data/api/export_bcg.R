# Exports metafor's dat.bcg (metadat; Colditz et al. 1994, JAMA 271:698-702: 13 trials of
# the BCG vaccine against tuberculosis) as the package's example data set
# fedsynth/data/bcg.csv (read by fedsynth.example_data("bcg")), and records metafor's
# results on it for the Python API's tests: escalc(OR) and rma() with REML (z and knha),
# DL, and the meta-regression on absolute latitude and allocation.
#
# Run: Rscript tests/data/api/export_bcg.R   (R 4.2.2, metafor 3.8-1, jsonlite)
# Writes fedsynth/data/bcg.csv and tests/data/api/bcg_api.json.

suppressPackageStartupMessages({library(metafor); library(jsonlite)})

bcg <- dat.bcg[, c("trial", "author", "year", "tpos", "tneg", "cpos", "cneg", "ablat",
                   "alloc")]
write.csv(bcg, "fedsynth/data/bcg.csv", row.names = FALSE)

dat <- escalc(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = bcg)
# the project's reference setting (tests/data/metafor_public.json): Fisher scoring to
# |change| < 1e-12 instead of rma's default 1e-5, so tau^2 is the exact root
ctl <- list(threshold = 1e-12)
num <- function(x) unname(as.numeric(x))
fit_summary <- function(fit) {
  out <- list(estimate = num(fit$beta), se = num(fit$se), ci_lb = num(fit$ci.lb),
              ci_ub = num(fit$ci.ub), tau2 = num(fit$tau2), I2 = num(fit$I2),
              Q = num(fit$QE), pval = num(fit$pval))
  if (length(fit$beta) == 1 && fit$method != "FE") {
    pr <- predict(fit)
    out$pi_lb <- num(pr$pi.lb); out$pi_ub <- num(pr$pi.ub)
  }
  out
}
fits <- list(
  REML_z = fit_summary(rma(yi, vi, data = dat, method = "REML", control = ctl)),
  REML_knha = fit_summary(rma(yi, vi, data = dat, method = "REML", test = "knha",
                              control = ctl)),
  DL_z = fit_summary(rma(yi, vi, data = dat, method = "DL")),
  REML_z_90 = fit_summary(rma(yi, vi, data = dat, method = "REML", level = 90,
                              control = ctl)))
mods <- rma(yi, vi, mods = ~ ablat + factor(alloc), data = dat, method = "REML",
            control = ctl)
by_alloc <- lapply(split(seq_len(nrow(dat)), dat$alloc), function(rows)
  fit_summary(rma(yi, vi, data = dat[rows, ], method = "REML", control = ctl)))

exact <- function(x) {
  if (is.list(x)) return(lapply(x, exact))
  if (is.double(x)) {
    txt <- ifelse(is.na(x), "null", sprintf("%.17g", x))
    return(structure(if (length(x) == 1) txt else paste0("[", paste(txt, collapse = ", "),
                                                         "]"), class = "json"))
  }
  x
}
doc <- list(
  provenance = paste0("tests/data/api/export_bcg.R; ", R.version.string, "; metafor ",
                      as.character(packageVersion("metafor"))),
  escalc_OR = list(yi = num(dat$yi), vi = num(dat$vi)),
  pooling = fits,
  meta_regression = list(names = rownames(mods$beta), coef = num(mods$beta),
                         se = num(mods$se), tau2 = num(mods$tau2), QM = num(mods$QM),
                         QMp = num(mods$QMp), QE = num(mods$QE), R2 = num(mods$R2)),
  by_alloc = by_alloc)
writeLines(toJSON(exact(doc), auto_unbox = TRUE, json_verbatim = TRUE, null = "null",
                  pretty = TRUE), "tests/data/api/bcg_api.json")
cat("wrote fedsynth/data/bcg.csv and tests/data/api/bcg_api.json\n")
