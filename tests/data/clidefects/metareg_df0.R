# metafor's behaviour when a meta-regression has as many coefficients as studies
# and how rma numbers repeated study labels (slab) in dat.bcg
# (R 4.2.2, metafor 3.8-1, jsonlite). Run once from this folder: Rscript metareg_df0.R
suppressMessages(library(metafor))
library(jsonlite)
dat <- data.frame(yi = c(0.1, 0.3, 0.5), vi = c(0.01, 0.02, 0.03), x = c(1, 2, 4))
msg <- function(method) tryCatch({rma(yi, vi, mods = ~ x + I(x^2), data = dat, method = method); NA},
                                 error = function(e) conditionMessage(e))
bcg <- escalc(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg_slab <- rma(yi, vi, data = bcg, slab = author)$slab  # repeated authors numbered
fe <- rma(yi, vi, mods = ~ x + I(x^2), data = dat, method = "FE")
out <- list(
  data = dat, bcg_slab = bcg_slab,
  error_REML = msg("REML"), error_DL = msg("DL"), error_PM = msg("PM"),
  FE = list(coef = unname(coef(fe)), se = unname(fe$se), QE = fe$QE, QE_df = fe$k - fe$p,
            QEp = fe$QEp, QM = fe$QM, QMp = fe$QMp, I2 = fe$I2, H2 = fe$H2,
            R2 = if (is.null(fe$R2)) NA else fe$R2))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null"),
           "metareg_df0.json")
