#!/usr/bin/env Rscript
# Reference values for fedsynth.meta.valmeta (ccalc, oecalc, valmeta).
#
# metamisc (Debray et al.) is not installable here (CRAN unreachable, not packaged by
# Debian), so this script re-states the formulas of metamisc 0.4.0's ccalc(), oecalc() and
# valmeta() -- written afresh from their documentation and source -- and pools with
# metafor::rma(), exactly as valmeta() does:
#
#   * c-statistic: pooled on the logit scale (model "normal/logit"); theta from the
#     c-statistic, else from sd(LP) (White et al. 2015); its variance, in this order of
#     preference, from the standard error (delta method), from the confidence interval on
#     the logit scale, from Hanley-McNeil/Newcombe (method 4 by default) with N and O
#     (O = Po N when O is missing, N = O / Po when N is missing).
#   * total O:E: pooled on the log scale (model "normal/log"); estimate and variance from
#     the first usable of, in this order: (OE, SE(OE)), (OE, CI(OE)), (O, E, N), (O, Pe, N),
#     (E, Po, N), (Po, Pe, N), (EO, SE(EO)), (O, E, Po), (O, E, Pe), (O, E),
#     (Po, Pe, SE(Po)), (Po, Pe) [no variance]; var(O/E) = O (1 - O/N) / E^2 with N,
#     O / E^2 without N, 0.5 added to O, E (and N) when E = 0; log scale by the delta method.
#   * rma(yi = theta, sei = theta.se, method, test) on the studies with both (valmeta's
#     default: REML with Knapp-Hartung; FE uses test = "z"); predict(fit, level) for the CI;
#     prediction interval beta +/- qt((1 + level) / 2, k - 2) sqrt(tau2 + se^2) (metamisc's
#     calcPredInt), none for FE; back-transformed with expit / exp.
#
# Deliberate differences from metamisc's code, all about inputs the documented examples
# never use (see docs/decisions/valmeta.md):
#   * a study whose theta is infinite or whose standard error is 0 or infinite is left
#     out (metamisc passes it to rma(), which fails or cannot compute Q and I^2);
#   * Hanley-McNeil from sd(LP): metamisc 0.4.0 passes the *transformed* c-statistic
#     (logit c) to the Hanley formula; here the c-statistic itself is used.
#   * rma() is run to |delta tau2| < 1e-12 (ML, REML, EB) and PM to a 1e-14 root instead
#     of metafor's defaults (1e-5, 1.2e-4), so that the values are the exact estimators.
#
# Run once from the repository root:
#   Rscript tests/data/valmeta/make_reference.R tests/data/valmeta
# R 4.2.2, metafor 3.8-1, jsonlite 1.8.4. Output: valmeta_reference.json.

suppressPackageStartupMessages({
  library(metafor)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
here <- if (length(args)) args[1] else "."

logit <- function(p) log(p / (1 - p))
expit <- function(x) 1 / (1 + exp(-x))

# g, its derivative (delta method) and its inverse
SCALES <- list(
  identity = list(f = function(x) x, d = function(x) rep(1, length(x)), inv = function(x) x),
  logit = list(f = logit, d = function(x) 1 / (x * (1 - x)), inv = expit),
  log = list(f = log, d = function(x) 1 / x, inv = exp)
)
MODELS <- list(cstat = c("normal/logit" = "logit", "normal/identity" = "identity"),
               OE = c("normal/log" = "log", "normal/identity" = "identity"))
NULLS <- list(cstat = 0.5, OE = 1)

# metamisc's selection: the first column whose value is not NA (NA or NaN), column 1 if none
first_available <- function(m) apply(m, 1, function(r) which.min(is.na(r)))
pick <- function(m, sel) m[cbind(seq_along(sel), sel)]

c_from_sdlp <- function(s, rel.tol = 1e-13) {
  vapply(s, function(si) {
    if (is.na(si)) return(NA_real_)
    2 * integrate(function(x) plogis(sqrt(2) * si * x) * dnorm(x), 0, Inf,
                  rel.tol = rel.tol)$value
  }, 0)
}

hanley_var <- function(cstat, N, O, method) {
  n <- O            # events
  m <- N - O        # non-events
  if (method == 2) {
    mstar <- m - 1
    nstar <- n - 1
  } else {
    mstar <- nstar <- N / 2 - 1
  }
  cstat * (1 - cstat) * (1 + nstar * (1 - cstat) / (2 - cstat) + mstar * cstat / (1 + cstat)) /
    (m * n)
}

prepare_cstat <- function(d, scale, level, method) {
  tr <- SCALES[[scale]]
  O <- ifelse(is.na(d$O), d$Po * d$N, d$O)
  N <- ifelse(is.na(d$N), O / d$Po, d$N)
  c_lp <- c_from_sdlp(d$sd.LP)
  est <- cbind(tr$f(d$cstat), tr$f(c_lp))
  sel <- first_available(est)
  theta <- pick(est, sel)
  theta_source <- c("c-statistic", "std.dev(LP)")[sel]
  theta_source[is.na(theta)] <- NA
  v <- cbind(
    (d$cstat.se * tr$d(d$cstat))^2,
    ((tr$f(d$cstat.ciub) - tr$f(d$cstat.cilb)) / (2 * qnorm((1 - d$cstat.cilv) / 2)))^2,
    hanley_var(d$cstat, N, O, method) * tr$d(d$cstat)^2,
    hanley_var(c_lp, N, O, method) * tr$d(c_lp)^2
  )
  selv <- first_available(v)
  theta_var <- pick(v, selv)
  se_names <- c("Standard Error", "Confidence Interval",
                sprintf("Newcombe (Method %d)", method), sprintf("Newcombe (Method %d)", method))
  se_source <- se_names[selv]
  se_source[is.na(theta_var)] <- NA
  cil <- ciu <- rep(NA_real_, nrow(d))
  same <- which(d$cstat.cilv == level)
  cil[same] <- tr$f(d$cstat.cilb[same])
  ciu[same] <- tr$f(d$cstat.ciub[same])
  z <- qnorm((1 + level) / 2)
  cil[is.na(cil)] <- (theta - z * sqrt(theta_var))[is.na(cil)]
  ciu[is.na(ciu)] <- (theta + z * sqrt(theta_var))[is.na(ciu)]
  data.frame(theta = theta, theta_se = sqrt(theta_var), theta_cilb = cil, theta_ciub = ciu,
             theta_source = theta_source, theta_se_source = se_source,
             stringsAsFactors = FALSE)
}

oe_from_oen <- function(O, E, N, add, correct_n = TRUE) {
  cc <- which(E == 0)
  E[cc] <- E[cc] + add
  O[cc] <- O[cc] + add
  if (correct_n) N[cc] <- N[cc] + add
  cbind(O / E, O * (1 - O / N) / E^2)
}

prepare_oe <- function(d, scale, level, add = 0.5) {
  tr <- SCALES[[scale]]
  k <- nrow(d)
  cand <- list(
    "OE and SE(OE)" = cbind(d$OE, d$OE.se^2),
    "OE and CI(OE)" = cbind(d$OE, ((d$OE.ciub - d$OE.cilb) / (2 * qnorm(0.5 + d$OE.cilv / 2)))^2),
    "O, E and N" = oe_from_oen(d$O, d$E, d$N, add),
    "O, Pe and N" = oe_from_oen(d$O, d$Pe * d$N, d$N, add),
    "E, Po and N" = oe_from_oen(d$Po * d$N, d$E, d$N, add),
    "Po, Pe and N" = oe_from_oen(d$Po * d$N, d$Pe * d$N, d$N, add),
    "EO and SE(EO)" = cbind(1 / d$EO, d$EO.se^2 / d$EO^4),
    "O, E and Po" = oe_from_oen(d$O, d$E, d$O / d$Po, add),
    "O, E and Pe" = oe_from_oen(d$O, d$E, d$E / d$Pe, add),
    "O and E" = {
      E <- d$E; O <- d$O; cc <- which(E == 0)
      E[cc] <- E[cc] + add; O[cc] <- O[cc] + add
      cbind(O / E, O / E^2)
    },
    "Po, Pe and SE(Po)" = cbind(d$Po / d$Pe, d$Po.se^2 / d$Pe^2),
    "Po and Pe" = cbind(d$Po / d$Pe, rep(NA_real_, k))
  )
  est <- sapply(cand, function(x) tr$f(x[, 1]))
  se <- sapply(cand, function(x) sqrt(tr$d(x[, 1])^2 * x[, 2]))
  if (k == 1) {
    est <- matrix(est, nrow = 1)
    se <- matrix(se, nrow = 1)
  }
  sel <- pmax(first_available(est), first_available(se))
  theta <- pick(est, sel)
  theta_se <- pick(se, sel)
  source <- names(cand)[sel]
  source[is.na(theta)] <- NA
  cil <- ciu <- rep(NA_real_, k)
  same <- which(d$OE.cilv == level)
  cil[same] <- tr$f(d$OE.cilb[same])
  ciu[same] <- tr$f(d$OE.ciub[same])
  z <- qnorm((1 + level) / 2)
  cil[is.na(cil)] <- (theta - z * theta_se)[is.na(cil)]
  ciu[is.na(ciu)] <- (theta + z * theta_se)[is.na(ciu)]
  O <- d$O; E <- d$E; N <- d$N
  O[is.na(O)] <- (d$Po * N)[is.na(O)]
  E[is.na(E)] <- (d$Pe * N)[is.na(E)]
  N[is.na(N)] <- (O / d$Po)[is.na(N)]
  N[is.na(N)] <- (E / d$Pe)[is.na(N)]
  se_source <- source
  se_source[is.na(theta_se)] <- NA
  data.frame(theta = theta, theta_se = theta_se, theta_cilb = cil, theta_ciub = ciu,
             theta_source = source, theta_se_source = se_source, O = O, E = E, N = N,
             stringsAsFactors = FALSE)
}

# valmeta() pools the rows whose theta and theta.se are not NA; fedsynth also leaves out
# those that rma() cannot weigh: an infinite theta (c = 0 or 1 on the logit scale) or a
# standard error that is infinite or 0 (e.g. O:E = 0 on the identity scale)
usable <- function(prep) is.finite(prep$theta) & is.finite(prep$theta_se) & prep$theta_se > 0

pool_valmeta <- function(prep, measure, scale, method, test, level) {
  if (method == "FE") test <- "z"
  tr <- SCALES[[scale]]
  ok <- usable(prep)
  fit <- rma(yi = prep$theta[ok], sei = prep$theta_se[ok], method = method, test = test,
             control = list(threshold = 1e-12, maxiter = 10000, tol = 1e-14))
  pred <- predict(fit, level = level)
  k <- fit$k
  mu <- as.numeric(fit$beta)
  if (method == "FE") {
    pi_lb <- pi_ub <- NA_real_
  } else {
    crit <- suppressWarnings(qt((1 + level) / 2, df = k - 2))
    pi_lb <- mu - crit * sqrt(fit$tau2 + fit$se^2)
    pi_ub <- mu + crit * sqrt(fit$tau2 + fit$se^2)
  }
  null_t <- tr$f(NULLS[[measure]])
  stat <- (mu - null_t) / fit$se
  knha <- test == "knha" && k >= 2
  pval <- if (knha) 2 * pt(-abs(stat), df = k - 1) else 2 * pnorm(-abs(stat))
  list(k = k, estimate = tr$inv(mu), ci_lb = tr$inv(pred$ci.lb), ci_ub = tr$inv(pred$ci.ub),
       pi_lb = tr$inv(pi_lb), pi_ub = tr$inv(pi_ub), tau2 = fit$tau2,
       mu = mu, mu_se = fit$se, mu_ci_lb = pred$ci.lb, mu_ci_ub = pred$ci.ub,
       mu_pi_lb = pi_lb, mu_pi_ub = pi_ub, stat = stat, pval = pval,
       I2 = fit$I2, Q = fit$QE, Q_pval = fit$QEp)
}

# ---------------------------------------------------------------------------------------
# data sets and cases
# ---------------------------------------------------------------------------------------

read_data <- function(file) read.csv(file.path(here, file), check.names = FALSE,
                                      stringsAsFactors = FALSE, na.strings = c("NA", ""))

ARG_NAMES <- list(
  cstat = c("cstat", "cstat.se", "cstat.cilb", "cstat.ciub", "cstat.cilv", "sd.LP", "N", "O",
            "Po"),
  OE = c("OE", "OE.se", "OE.cilb", "OE.ciub", "OE.cilv", "EO", "EO.se", "N", "O", "E", "Po",
         "Po.se", "Pe")
)

# args: metamisc argument -> CSV column (a string) or a constant (a number, e.g. cstat.cilv)
case_inputs <- function(data, measure, args) {
  k <- nrow(data)
  d <- list()
  for (a in ARG_NAMES[[measure]]) {
    v <- args[[a]]
    if (is.null(v)) {
      d[[a]] <- if (a %in% c("cstat.cilv", "OE.cilv")) rep(0.95, k) else rep(NA_real_, k)
    } else if (is.character(v)) {
      d[[a]] <- as.numeric(data[[v]])
    } else {
      d[[a]] <- rep(as.numeric(v), k)
    }
  }
  # a level column is only read where a confidence interval is given (0.95 elsewhere)
  for (a in c("cstat.cilv", "OE.cilv")) if (!is.null(d[[a]])) d[[a]][is.na(d[[a]])] <- 0.95
  as.data.frame(d, check.names = FALSE)
}

cases <- list()
add_case <- function(file, label, measure, args, method = "REML", test = "knha", level = 0.95,
                     model = NULL, approx_se_method = 4, note = NULL) {
  if (is.null(model)) model <- names(MODELS[[measure]])[1]
  scale <- unname(MODELS[[measure]][model])
  data <- read_data(file)
  d <- case_inputs(data, measure, args)
  prep <- if (measure == "cstat") prepare_cstat(d, scale, level, approx_se_method) else
    prepare_oe(d, scale, level)
  res <- pool_valmeta(prep, measure, scale, method, test, level)
  labels <- make.unique(as.character(data[[label]]))
  studies <- lapply(seq_len(nrow(prep)), function(i) {
    s <- list(label = labels[i], theta = prep$theta[i], theta_se = prep$theta_se[i],
              theta_cilb = prep$theta_cilb[i], theta_ciub = prep$theta_ciub[i],
              theta_source = prep$theta_source[i], theta_se_source = prep$theta_se_source[i],
              used = usable(prep)[i])
    if (measure == "OE") {
      s$O <- prep$O[i]; s$E <- prep$E[i]; s$N <- prep$N[i]
    }
    s
  })
  id <- paste(sub("\\.csv$", "", file), measure, paste(names(args), collapse = "+"), model,
              method, test, level, approx_se_method, sep = "/")
  cases[[length(cases) + 1]] <<- list(
    id = id, file = file, label = label, measure = measure,
    args = lapply(args, function(v) if (is.character(v)) v else unbox(v)),
    method = method, test = test, level = level, model = model,
    approx_se_method = approx_se_method, note = note,
    expected = c(res, list(studies = studies)))
}

# --- EuroSCORE II (Guida et al. 2014, as metamisc ships it) ----------------------------
es_c <- list(cstat = "c.index", cstat.se = "se.c.index", cstat.cilb = "c.index.95CIl",
             cstat.ciub = "c.index.95CIu", cstat.cilv = 0.95, N = "n", O = "n.events")
add_case("EuroSCORE.csv", "Study", "cstat", es_c,
         note = "metamisc's documented example: 0.7889 [0.7649, 0.8110], PI [0.6793, 0.8683]")
for (mt in list(c("REML", "z"), c("DL", "knha"), c("DL", "z"), c("FE", "z"), c("ML", "z"),
                c("PM", "knha"), c("EB", "z"), c("HE", "knha"), c("SJ", "z"))) {
  add_case("EuroSCORE.csv", "Study", "cstat", es_c, method = mt[1], test = mt[2])
}
add_case("EuroSCORE.csv", "Study", "cstat", es_c, level = 0.9)
add_case("EuroSCORE.csv", "Study", "cstat", es_c, model = "normal/identity")
add_case("EuroSCORE.csv", "Study", "cstat", list(cstat = "c.index", N = "n", O = "n.events"),
         note = "SE restored by Hanley-McNeil/Newcombe method 4 for every study")
add_case("EuroSCORE.csv", "Study", "cstat", list(cstat = "c.index", N = "n", O = "n.events"),
         approx_se_method = 2)
add_case("EuroSCORE.csv", "Study", "cstat", list(cstat = "c.index", N = "n", Po = "Po"),
         note = "O restored as Po * N")
add_case("EuroSCORE.csv", "Study", "cstat", list(cstat = "c.index", cstat.se = "se.c.index"),
         note = "studies without a standard error are dropped")
add_case("EuroSCORE.csv", "Study", "cstat", list(cstat = "c.index", cstat.cilb = "c.index.95CIl",
                                                  cstat.ciub = "c.index.95CIu"),
         note = "3 studies with a confidence interval")

es_oe <- list(O = "n.events", E = "e.events", N = "n")
add_case("EuroSCORE.csv", "Study", "OE", es_oe,
         note = "metamisc's documented example: 1.1076 [0.8999, 1.3632], PI [0.4295, 2.8561]")
for (mt in list(c("REML", "z"), c("DL", "knha"), c("DL", "z"), c("FE", "z"), c("ML", "knha"),
                c("PM", "z"), c("HS", "knha"))) {
  add_case("EuroSCORE.csv", "Study", "OE", es_oe, method = mt[1], test = mt[2])
}
add_case("EuroSCORE.csv", "Study", "OE", es_oe, level = 0.9)
add_case("EuroSCORE.csv", "Study", "OE", es_oe, model = "normal/identity")
add_case("EuroSCORE.csv", "Study", "OE", list(O = "n.events", E = "e.events"))
add_case("EuroSCORE.csv", "Study", "OE", list(Po = "Po", Pe = "Pe", N = "n"))
add_case("EuroSCORE.csv", "Study", "OE", list(O = "n.events", Pe = "Pe", N = "n"))
add_case("EuroSCORE.csv", "Study", "OE", list(E = "e.events", Po = "Po", N = "n"))
add_case("EuroSCORE.csv", "Study", "OE", list(O = "n.events", E = "e.events", Po = "Po"))
add_case("EuroSCORE.csv", "Study", "OE", list(O = "n.events", E = "e.events", Pe = "Pe"))
add_case("EuroSCORE.csv", "Study", "OE", list(O = "n.events", E = "e.events", N = "n",
                                               Po = "Po", Pe = "Pe"),
         note = "(O, E, N) is preferred over (Po, Pe, N)")

# --- synthetic validations: every input combination, one per row ---------------------
sv_c <- list(cstat = "c", cstat.se = "c_se", cstat.cilb = "c_lb", cstat.ciub = "c_ub",
             cstat.cilv = "c_lv", sd.LP = "sd_lp", N = "n", O = "events", Po = "po")
add_case("synthetic_validations.csv", "study", "cstat", sv_c)
for (mt in list(c("REML", "z"), c("DL", "z"), c("FE", "z"), c("PM", "knha"))) {
  add_case("synthetic_validations.csv", "study", "cstat", sv_c, method = mt[1], test = mt[2])
}
add_case("synthetic_validations.csv", "study", "cstat", sv_c, level = 0.9)
add_case("synthetic_validations.csv", "study", "cstat", sv_c, approx_se_method = 2)
add_case("synthetic_validations.csv", "study", "cstat", sv_c, model = "normal/identity")

sv_oe <- list(OE = "oe", OE.se = "oe_se", OE.cilb = "oe_lb", OE.ciub = "oe_ub",
              OE.cilv = "oe_lv", EO = "eo", EO.se = "eo_se", N = "n", O = "events",
              E = "e_events", Po = "po", Po.se = "po_se", Pe = "pe")
add_case("synthetic_validations.csv", "study", "OE", sv_oe)
for (mt in list(c("REML", "z"), c("DL", "z"), c("FE", "z"), c("ML", "knha"))) {
  add_case("synthetic_validations.csv", "study", "OE", sv_oe, method = mt[1], test = mt[2])
}
add_case("synthetic_validations.csv", "study", "OE", sv_oe, level = 0.9)
add_case("synthetic_validations.csv", "study", "OE", sv_oe, model = "normal/identity")

# --- the test data of metamisc's own ccalc tests (cardiovascular risk models) ----------
dm_c <- list(cstat = "Cstat", cstat.se = "CstatSE", cstat.cilb = "Cstat95LB",
             cstat.ciub = "Cstat95UB", N = "Samplesize", O = "N_events")
add_case("damen.csv", "Authoryear", "cstat", dm_c)
add_case("damen.csv", "Authoryear", "cstat", dm_c, method = "DL", test = "z")

# --- the integrand of sd(LP): R's default tolerance (metamisc) vs a tight one ----------
sdlp <- c(0.25, 0.5, 0.95, 1.1, 1.4, 2, 3, 5)
sdlp_check <- list(sd_LP = sdlp, cstat = c_from_sdlp(sdlp, 1e-13),
                   cstat_default_tol = c_from_sdlp(sdlp, .Machine$double.eps^0.25))

out <- list(
  provenance = list(
    r = R.version.string, metafor = as.character(packageVersion("metafor")),
    jsonlite = as.character(packageVersion("jsonlite")),
    script = "tests/data/valmeta/make_reference.R",
    formulas = "metamisc 0.4.0 ccalc/oecalc/valmeta (see the script header)"),
  sd_lp = sdlp_check,
  cases = cases)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, na = "null", null = "null",
                  pretty = FALSE),
           file.path(here, "valmeta_reference.json"))
cat(sprintf("%d cases written\n", length(cases)))
doc <- cases[[1]]$expected
cat(sprintf("EuroSCORE c: %.4f [%.4f, %.4f] PI [%.4f, %.4f] k = %d\n", doc$estimate,
            doc$ci_lb, doc$ci_ub, doc$pi_lb, doc$pi_ub, doc$k))
oe <- Filter(function(cs) cs$measure == "OE", cases)[[1]]$expected
cat(sprintf("EuroSCORE OE: %.4f [%.4f, %.4f] PI [%.4f, %.4f] k = %d\n", oe$estimate,
            oe$ci_lb, oe$ci_ub, oe$pi_lb, oe$pi_ub, oe$k))
print(sdlp_check)
