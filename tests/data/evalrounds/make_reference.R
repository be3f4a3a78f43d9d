# Reference values for pooling performance measures in federated evaluation rounds
# (issue 12, phase 2; tests/reference/test_evalrounds_reference.py).
#
# Six sites send, per analysis, what fedsynth's site estimators send: a raw AUC with its
# DeLong variance (pooled on the logit scale by the delta method), a calibration slope,
# calibration-in-the-large, log O:E and the Brier score. The coordinator pools each with
# REML and Knapp-Hartung, the prediction interval with t(k - 2) (Debray et al. 2017, BMJ
# 356:i6460; metamisc's valmeta), and tests against each measure's null: logit(0.5) = 0,
# slope 1, CITL 0, log(1) = 0; the Brier score gets no test.
#
# Run once: Rscript tests/data/evalrounds/make_reference.R (R 4.2.2, metafor 3.8-1,
# jsonlite 1.8.4); writes tests/data/evalrounds/reference.json.
suppressMessages({library(metafor); library(jsonlite)})
here <- "tests/data/evalrounds"
sites <- c("mtf-alpha", "mtf-bravo", "mtf-charlie", "mtf-delta", "mtf-echo", "mtf-foxtrot")
input <- list(
  auc = list(yi = c(0.712, 0.781, 0.745, 0.802, 0.688, 0.760),
             vi = c(0.00031, 0.00042, 0.00025, 0.00051, 0.00036, 0.00029)),
  calibration_slope = list(yi = c(0.91, 1.12, 0.85, 1.04, 0.78, 0.97),
                           vi = c(0.0061, 0.0092, 0.0055, 0.0110, 0.0070, 0.0058)),
  calibration_in_the_large = list(yi = c(0.21, -0.15, 0.05, -0.32, 0.28, 0.02),
                                  vi = c(0.0041, 0.0052, 0.0038, 0.0066, 0.0047, 0.0039)),
  oe_ratio = list(yi = log(c(1.22, 0.86, 1.04, 0.74, 1.31, 1.01)),
                  vi = c(0.0048, 0.0061, 0.0043, 0.0075, 0.0052, 0.0045)),
  brier = list(yi = c(0.151, 0.162, 0.139, 0.171, 0.158, 0.147),
               vi = c(1.1e-5, 1.4e-5, 0.9e-5, 1.7e-5, 1.2e-5, 1.0e-5)))
nulls <- list(auc = 0, calibration_slope = 1, calibration_in_the_large = 0, oe_ratio = 0,
              brier = NA)
out <- list(sites = sites, input = input, analyses = list())
for (name in names(input)) {
  y <- input[[name]]$yi; v <- input[[name]]$vi
  if (name == "auc") {                 # delta method to the logit scale
    v <- v / (y * (1 - y))^2
    y <- qlogis(y)
  }
  fit <- rma(y, v, method = "REML", test = "knha",
             control = list(threshold = 1e-12, maxiter = 1000))   # converged tightly
  k <- fit$k
  half <- qt(0.975, k - 2) * sqrt(fit$tau2 + fit$se^2)
  null <- nulls[[name]]
  stat <- if (is.na(null)) NA else (as.numeric(fit$beta) - null) / fit$se
  pval <- if (is.na(null)) NA else 2 * pt(-abs(stat), k - 1)
  b <- blup(fit)
  out$analyses[[name]] <- list(
    yi = y, vi = v, estimate = as.numeric(fit$beta), se = fit$se, ci_lb = fit$ci.lb,
    ci_ub = fit$ci.ub, tau2 = fit$tau2, I2 = fit$I2, Q = fit$QE,
    pi_lb = as.numeric(fit$beta) - half, pi_ub = as.numeric(fit$beta) + half,
    stat = stat, pval = pval, blup = b$pred, blup_pi_lb = b$pi.lb, blup_pi_ub = b$pi.ub)
}
out$provenance <- paste("R", getRversion(), "metafor", packageVersion("metafor"),
                        "jsonlite", packageVersion("jsonlite"))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE),
           file.path(here, "reference.json"))
