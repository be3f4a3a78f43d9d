# Reference values for pooling and meta-regression on data with tiny sampling variances
# (issue 16, first bullet: REML tau^2 was off by ~1e-3 relative when vi ~ 1e-16).
#
# Data: ten Planck-constant-like measurements, h in units of 1e-34 J s, modelled on the
# CODATA 2017 input data (values near 6.62607, standard uncertainties of about 1e-8), so
# yi ~ 6.6 and vi ~ 1e-16. The values are synthetic (listed below), with a between-lab
# spread larger than the uncertainties (I^2 ~ 80-90%), a two-level moderator
# (measurement technique) and a numeric one (year, centred at 2015).
#
# Why the values are computed at unit scale: metafor's stopping rules are absolute
# (Fisher scoring threshold 1e-5, uniroot tol eps^0.25), so at this scale its default
# fits stop at the first step, and confint() evaluates Q on the uncentred yi, where
# sum(w y^2) ~ 4e17 cancels catastrophically. The model is equivariant under
# y -> shift + c y, v -> c^2 v (tau^2 -> c^2 tau^2; estimates, CIs, PIs -> shift + c x;
# standard errors -> c x; z, p, Q, I^2, H^2, R^2 unchanged; logLik -> logLik -
# (k - p_REML) log(c) with p_REML = p for REML and 0 otherwise; the test of a location
# against 0 is recomputed from the mapped values). So every value is
# computed on the same doubles shifted and rescaled to unit scale ((yi - 6.62607) * 1e8,
# vi * 1e16) and mapped back exactly. As a check the script also fits the raw doubles
# with the same stopping rules scaled by c^2 (threshold and tol 1e-28) and stops
# unless tau^2 agrees to 1e-8 relative and every estimate/coefficient to 1e-6 of its
# standard error.
#
# Run: Rscript tests/data/scale/planck.R   (R 4.2.2, metafor 3.8-1, jsonlite)
# Writes tests/data/scale/planck.json.

suppressPackageStartupMessages({library(metafor); library(jsonlite)})

d  <- c(-4, 8.25, 2.5, 4.5, 6, 1, -1.25, 7, 3.5, 0.5)            # from 6.62607, in 1e-8
se <- c(2.225, 1.5, 0.95, 2.35, 3, 0.6, 1.25, 1.925, 0.775, 1.625)  # standard errors, 1e-8
technique <- c("kibble", "kibble", "xrcd", "kibble", "xrcd", "xrcd", "kibble", "kibble",
               "xrcd", "kibble")
year <- c(2011, 2014, 2015, 2015, 2016, 2017, 2017, 2017, 2018, 2018) - 2015  # centred
labels <- paste0("lab", seq_along(d))
shift <- 6.62607
c <- 1e-8
yi <- shift + d * c
vi <- (se * c)^2
yu <- (yi - shift) / c           # the same doubles at unit scale
vu <- vi / c^2
k <- length(yi)

# stopping rules: the project's reference setting at unit scale (threshold 1e-12, as
# tests/data/metafor_public.json), the same rule scaled by c^2 for the raw doubles
unit <- list(threshold = 1e-12, tol = 1e-12, maxiter = 10000)
tight <- list(threshold = 1e-12 * c^2, tol = 1e-12 * c^2, maxiter = 10000)
num <- function(x) if (is.null(x) || length(x) == 0) NULL else unname(as.numeric(x))
loc <- function(x) shift + c * num(x)          # a location: estimate, bound, coefficient

two_sided <- function(stat, test, df) {
  if (test == "knha") 2 * pt(-abs(stat), df) else 2 * pnorm(-abs(stat))
}

check_raw <- function(fit_raw, fitu, what, p) {
  if (abs(fit_raw$tau2 - c^2 * fitu$tau2) > 1e-8 * c^2 * fitu$tau2 + 1e-300)
    stop(sprintf("%s: raw tau2 %g vs rescaled %g", what, fit_raw$tau2, c^2 * fitu$tau2))
  b_raw <- as.numeric(fit_raw$beta); b_u <- as.numeric(fitu$beta)
  mapped <- c * b_u
  mapped[1] <- shift + mapped[1]
  if (any(abs(b_raw - mapped) > 1e-6 * as.numeric(fit_raw$se)))
    stop(sprintf("%s: raw coefficients differ from the rescaled ones", what))
}

pool_case <- function(method, test) {
  fitu <- rma(yu, vu, method = method, test = test, control = unit)
  check_raw(rma(yi, vi, method = method, test = test, control = tight), fitu,
            paste("pooling", method, test))
  p_reml <- if (method == "REML") 1 else 0
  est <- loc(fitu$beta); sei <- c * num(fitu$se)
  out <- list(k = fitu$k, estimate = est, se = sei, stat = est / sei,
              pval = two_sided(est / sei, test, k - 1), ci_lb = loc(fitu$ci.lb),
              ci_ub = loc(fitu$ci.ub), tau2 = c^2 * num(fitu$tau2),
              se_tau2 = c^2 * num(fitu$se.tau2), Q = num(fitu$QE), Q_df = fitu$k - 1,
              Q_pval = num(fitu$QEp), I2 = num(fitu$I2), H2 = num(fitu$H2),
              logLik = num(logLik(fitu)) - (k - p_reml) * log(c))
  if (method == "FE") {
    out$se_tau2 <- NULL
  } else {
    pr <- predict(fitu)
    out$pi_lb <- loc(pr$pi.lb); out$pi_ub <- loc(pr$pi.ub)
    ci <- confint(fitu, control = list(tol = 1e-12))
    out$tau2_ci <- c^2 * num(ci$random["tau^2", c("ci.lb", "ci.ub")])
    out$I2_ci <- num(ci$random["I^2(%)", c("ci.lb", "ci.ub")])
    out$H2_ci <- num(ci$random["H^2", c("ci.lb", "ci.ub")])
  }
  list(id = paste0("planck/", method, "/", test), method = method, test = test,
       level = 95, expected = out)
}

mods_case <- function(method, test) {
  fitu <- rma(yu, vu, mods = ~ factor(technique) + year, method = method, test = test,
              control = unit)
  check_raw(rma(yi, vi, mods = ~ factor(technique) + year, method = method, test = test,
                control = tight), fitu, paste("meta-regression", method, test))
  coefs <- c(loc(fitu$beta[1]), c * num(fitu$beta[-1])); sei <- c * num(fitu$se)
  # the slopes' tests are unchanged by the mapping; the intercept's is recomputed (it
  # tests the shifted location against 0)
  pvals <- num(fitu$pval)
  pvals[1] <- two_sided(coefs[1] / sei[1], test, k - length(coefs))
  out <- list(coef = coefs, se = sei, pval = pvals,
              ci_lb = c(loc(fitu$ci.lb[1]), c * num(fitu$ci.lb[-1])),
              ci_ub = c(loc(fitu$ci.ub[1]), c * num(fitu$ci.ub[-1])),
              tau2 = c^2 * num(fitu$tau2), QE = num(fitu$QE), QEp = num(fitu$QEp),
              QM = num(fitu$QM), QMp = num(fitu$QMp), I2 = num(fitu$I2), H2 = num(fitu$H2))
  if (method != "FE") {
    out$se_tau2 <- c^2 * num(fitu$se.tau2)
    out$R2 <- num(fitu$R2)
  }
  list(id = paste0("planck-mods/", method, "/", test), method = method, test = test,
       level = 95, expected = out)
}

methods <- c("FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM")
pooling <- list()
metareg <- list()
for (m in methods) for (t in c("z", "knha")) {
  if (m == "FE" && t == "knha") next
  pooling[[length(pooling) + 1]] <- pool_case(m, t)
  metareg[[length(metareg) + 1]] <- mods_case(m, t)
}

doc <- list(
  provenance = paste0("tests/data/scale/planck.R; ", R.version.string, "; metafor ",
                      as.character(packageVersion("metafor"))),
  shift = shift, yi = yi, vi = vi, labels = labels, technique = technique, year = year,
  pooling = pooling, meta_regression = metareg)
# every number with 17 significant digits, so Python reads back the same doubles
# (jsonlite itself writes at most 15)
exact <- function(x) {
  if (is.list(x)) return(lapply(x, exact))
  if (is.double(x)) {
    txt <- ifelse(is.na(x), "null", sprintf("%.17g", x))
    return(structure(if (length(x) == 1) txt else paste0("[", paste(txt, collapse = ", "),
                                                         "]"), class = "json"))
  }
  x
}
writeLines(toJSON(exact(doc), auto_unbox = TRUE, json_verbatim = TRUE, null = "null",
                  pretty = TRUE), "tests/data/scale/planck.json")
cat("wrote tests/data/scale/planck.json:", length(pooling), "pooling and", length(metareg),
    "meta-regression cases\n")
