# Reference values for fedsynth.models (tests/reference/test_models_reference.py).
#
# Run once from the repository root with R 4.2.2 and Debian's r-cran-metafor (3.8-1) and
# r-cran-jsonlite:  Rscript tests/data/models/reference.R
# It reads tests/data/models/trauma_registry.csv (written by make_registry.py) and writes
# tests/data/models/reference.json:
#   * per model (binomial, gaussian, poisson with an offset): the one-stage glm on all rows,
#     the stratified glm(y ~ 0 + site + ...), every site's own glm (coefficients, vcov;
#     NA where aliased), rma(method = "REML") of every coefficient across sites, and
#     rma.mv of the coefficient vectors with the within-site vcov (struct DIAG; UN for the
#     poisson model, whose 6 coefficients make UN identifiable with 8 sites);
#   * metafor's dat.berkey1998 (exported) with rma.mv UN and DIAG, REML and ML.
#   * the categorical-covariate analyses of the trauma spec per site (glm, lm) and a Cox
#     model with a categorical covariate on survival's lung data (exported), both ties.
# glm runs at epsilon = 1e-12 (R's default 1e-8 leaves ~1e-8 in the estimates); rma.mv is
# fitted with several of metafor's optimisers and the fit with the highest log-likelihood
# is kept (metafor's default nlminb stops ~1e-6 short of the maximum on small problems).
# A site whose own logistic fit separates (R's symptom: a coefficient beyond 15 in absolute
# value with a standard error above 100; there is no finite MLE) is left out of the pooled
# analyses, as fedsynth does (which detects it exactly, by linear programming).

suppressMessages({
  library(metafor)
  library(jsonlite)
  library(survival)
})

here <- "tests/data/models"
d <- read.csv(file.path(here, "trauma_registry.csv"), na.strings = "",
              stringsAsFactors = FALSE)   # "None" is a level (pupils), not a missing value
levels_of <- list(motor_score = c("5/6", "4", "3", "1/2"), pupil = c("Both", "One", "None"),
                  ct = c("I/II", "III", "IV/V"))
for (v in names(levels_of)) d[[v]] <- factor(d[[v]], levels = levels_of[[v]])
sites <- unique(d$site)
d$site <- factor(d$site, levels = sites)

models <- list(
  tbi_mortality = list(family = binomial(),
                       rhs = c("age", "motor_score", "pupil", "ct", "hypox", "hypots",
                               "tsah", "edh"), outcome = "mort", offset = NULL),
  length_of_stay = list(family = gaussian(),
                        rhs = c("age", "motor_score", "ct", "hypox", "hypots"),
                        outcome = "los_days", offset = NULL),
  complications = list(family = poisson(), rhs = c("age", "ct", "hypox", "hypots"),
                       outcome = "complications", offset = "log_los"))

# fedsynth's coefficient names: intercept, numeric columns, column=level.
our_names <- function(rhs) {
  out <- "intercept"
  for (v in rhs) {
    if (v %in% names(levels_of)) out <- c(out, paste0(v, "=", levels_of[[v]][-1]))
    else out <- c(out, v)
  }
  out
}
r_names <- function(rhs) {
  out <- "(Intercept)"
  for (v in rhs) {
    if (v %in% names(levels_of)) out <- c(out, paste0(v, levels_of[[v]][-1]))
    else out <- c(out, v)
  }
  out
}
ctl <- glm.control(epsilon = 1e-12, maxit = 100)
na_null <- function(x) lapply(x, function(v) if (is.na(v)) NULL else v)
named <- function(values, names) setNames(na_null(as.list(unname(values))), names)
matrix_rows <- function(m) lapply(seq_len(nrow(m)), function(i) na_null(as.list(unname(m[i, ]))))

fit_glm <- function(formula, data, family) {
  fit <- suppressWarnings(glm(formula, data = data, family = family, control = ctl))
  # vcov() of a glm uses the IRLS weights of the iterate before the last one, which are
  # ~1e-6 relative away from those at the estimate on small sites. One more IRLS pass
  # started at the converged coefficients puts the weights (and the covariance) at the
  # estimate; the iteration count kept is the first fit's.
  start <- coef(fit)
  start[is.na(start)] <- 0
  again <- tryCatch(suppressWarnings(glm(formula, data = data, family = family,
                                         control = ctl, start = start)),
                    error = function(e) NULL)
  if (is.null(again)) return(fit)
  again$iter <- fit$iter
  again
}

best_rma_mv <- function(yi, V, outcome, study, struct, method) {
  controls <- list(list(), list(rel.tol = 1e-12, iter.max = 10000, eval.max = 10000),
                   list(optimizer = "nlm", gradtol = 1e-12, steptol = 1e-14, iterlim = 10000))
  if (nlevels(outcome) <= 2) {   # derivative-free optimisers: slow beyond a few parameters
    controls <- c(controls, list(list(optimizer = "uobyqa", rhoend = 1e-12),
                                 list(optimizer = "bobyqa", rhoend = 1e-12)))
  }
  best <- NULL
  try_fit <- function(cc) {
    # At most 5 minutes per optimiser (nlm with numerical derivatives can crawl on 21
    # parameters); a fit that runs out of time is skipped.
    setTimeLimit(elapsed = 300, transient = TRUE)
    on.exit(setTimeLimit(elapsed = Inf))
    res <- tryCatch(rma.mv(yi, V, mods = ~ outcome - 1, random = ~ outcome | study,
                           struct = struct, method = method, control = cc),
                    error = function(e) NULL)
    setTimeLimit(elapsed = Inf)
    if (!is.null(res) && (is.null(best) || logLik(res) > logLik(best))) best <<- res
    message(format(Sys.time()), " ", struct, " ", method, " ",
            if (is.null(cc$optimizer)) "nlminb" else cc$optimizer,
            if (is.null(res)) " failed" else sprintf(" %.12g", logLik(res)))
  }
  for (cc in controls) try_fit(cc)
  # Warm restarts (DIAG): every optimiser again from the best estimates so far; on the
  # 9- and 13-coefficient models a cold start stops well short of the maximum. (With UN a
  # warm start from rho.init made metafor hang inside compiled code, beyond the reach of
  # setTimeLimit; the cold UN fits agree across optimisers.)
  if (struct == "DIAG") {
    for (pass in 1:2) {
      for (cc in controls) try_fit(c(cc, list(tau2.init = pmax(best$tau2, 1e-6))))
    }
  }
  best
}

mv_dict <- function(res, names) {
  G <- res$G
  list(estimate = named(res$beta, names), se = named(res$se, names),
       tau2 = named(res$tau2, names), G = matrix_rows(G),
       rho = if (length(res$rho)) matrix_rows(cov2cor(G)) else NULL,
       logLik = as.numeric(logLik(res)), AIC = AIC(res), BIC = BIC(res),
       QE = res$QE, QE_df = res$k - res$p, QE_pval = res$QEp,
       pi_lb = named(sapply(seq_along(names), function(j)
         predict(res, newmods = diag(length(names))[j, ], tau2.levels = j)$pi.lb), names),
       pi_ub = named(sapply(seq_along(names), function(j)
         predict(res, newmods = diag(length(names))[j, ], tau2.levels = j)$pi.ub), names))
}

out <- list(provenance = list(
  R = R.version.string, metafor = as.character(packageVersion("metafor")),
  jsonlite = as.character(packageVersion("jsonlite")),
  script = "tests/data/models/reference.R", data = "tests/data/models/trauma_registry.csv",
  glm_epsilon = 1e-12))

out$models <- list()
for (name in names(models)) {
  m <- models[[name]]
  ours <- our_names(m$rhs)
  rn <- r_names(m$rhs)
  rhs <- paste(c(m$rhs, if (!is.null(m$offset)) sprintf("offset(%s)", m$offset)),
               collapse = " + ")
  f1 <- as.formula(sprintf("%s ~ %s", m$outcome, rhs))
  one <- fit_glm(f1, d, m$family)
  s1 <- summary(one)
  entry <- list(family = m$family$family, names = ours)
  entry$one_stage <- list(
    coefficients = named(coef(one)[rn], ours), se = named(sqrt(diag(vcov(one)))[rn], ours),
    deviance = deviance(one), aic = AIC(one), logLik = as.numeric(logLik(one)),
    df_residual = df.residual(one), dispersion = s1$dispersion, iter = one$iter,
    n = nobs(one))
  f2 <- as.formula(sprintf("%s ~ 0 + site + %s", m$outcome, rhs))
  strat <- fit_glm(f2, d, m$family)
  slopes <- rn[-1]
  sn <- paste0("site", sites)
  entry$stratified <- list(
    coefficients = named(coef(strat)[slopes], ours[-1]),
    se = named(sqrt(diag(vcov(strat)))[slopes], ours[-1]),
    site_intercepts = named(coef(strat)[sn], sites),
    site_intercepts_se = named(sqrt(diag(vcov(strat)))[sn], sites),
    deviance = deviance(strat), iter = strat$iter)
  per_site <- list()
  est <- matrix(NA_real_, length(sites), length(ours))
  vcovs <- list()
  for (i in seq_along(sites)) {
    sub <- d[d$site == sites[i], ]
    fit <- fit_glm(f1, sub, m$family)
    b <- coef(fit)[rn]
    V <- matrix(NA_real_, length(rn), length(rn))
    ok <- !is.na(b)
    V[ok, ok] <- vcov(fit)[rn[ok], rn[ok]]
    separated <- m$family$family == "binomial" &&
      any(abs(b) > 15 & sqrt(diag(V)) > 100, na.rm = TRUE)
    est[i, ] <- if (separated) NA else b
    vcovs[[i]] <- V
    per_site[[sites[i]]] <- list(coefficients = named(b, ours), vcov = matrix_rows(V),
                                 se = named(sqrt(diag(V)), ours), deviance = deviance(fit),
                                 converged = fit$converged, iter = fit$iter, n = nobs(fit),
                                 separated = separated)
  }
  entry$per_site <- per_site
  keep <- rowSums(!is.na(est)) > 0
  pooled <- list()
  for (j in seq_along(ours)) {
    ok <- !is.na(est[, j])
    # rma's Fisher scoring stops on an absolute change in tau2; the coefficients' tau2 can
    # be ~1e-6 (age per year), where a threshold of 1e-12 leaves ~1e-6 relative in tau2 and
    # I2. So it is fitted again from that estimate with a threshold 1e-10 relative to it.
    yj <- est[ok, j]
    vj <- sapply(vcovs[ok], function(V) V[j, j])
    first <- rma(yj, vj, method = "REML", control = list(threshold = 1e-12, maxiter = 10000))
    res <- tryCatch(rma(yj, vj, method = "REML",
                        control = list(threshold = max(first$tau2, 1e-10) * 1e-10,
                                       tau2.init = first$tau2, maxiter = 10000)),
                    error = function(e) first)
    pr <- predict(res)
    pooled[[ours[j]]] <- list(k = res$k, estimate = as.numeric(res$beta), se = res$se,
                              ci_lb = res$ci.lb, ci_ub = res$ci.ub, tau2 = res$tau2,
                              I2 = res$I2, H2 = res$H2, Q = res$QE, Q_pval = res$QEp,
                              pi_lb = pr$pi.lb, pi_ub = pr$pi.ub,
                              logLik = as.numeric(logLik(res)))
  }
  entry$pooled <- pooled
  # Long format for rma.mv: one row per (site, estimated coefficient).
  rows <- which(!is.na(est), arr.ind = TRUE)
  rows <- rows[order(rows[, 1], rows[, 2]), , drop = FALSE]
  yi <- est[rows]
  outcome <- factor(ours[rows[, 2]], levels = ours)
  study <- factor(sites[rows[, 1]], levels = sites)
  V <- bldiag(lapply(which(keep), function(i) {
    ok <- !is.na(est[i, ])
    vcovs[[i]][ok, ok, drop = FALSE]
  }))
  entry$multivariate <- list()
  structs <- if (name == "complications") c("DIAG", "UN") else c("DIAG")
  for (st in structs) {
    res <- best_rma_mv(yi, V, outcome, study, st, "REML")
    entry$multivariate[[st]] <- mv_dict(res, ours)
  }
  out$models[[name]] <- entry
}

# The spec's analyses with categorical covariates, per site.
analyses <- list(
  hypotension_adjusted_logOR = list(formula = mort ~ hypots + age + motor_score + pupil + ct,
                                    term = "hypots", fit = function(f, s) glm(f, binomial, s,
                                                                             control = ctl)),
  hypoxia_los_MD = list(formula = los_days ~ hypox + age + ct, term = "hypox",
                        fit = function(f, s) lm(f, s)))
out$analyses <- list()
for (name in names(analyses)) {
  a <- analyses[[name]]
  out$analyses[[name]] <- list()
  for (s in sites) {
    fit <- suppressWarnings(a$fit(a$formula, d[d$site == s, ]))
    out$analyses[[name]][[s]] <- list(yi = unname(coef(fit)[a$term]),
                                      vi = vcov(fit)[a$term, a$term], n = nobs(fit))
  }
}

# Cox with a categorical covariate: survival's lung data (ph.ecog as a factor, 0 reference).
lung2 <- survival::lung
lung2 <- data.frame(time = lung2$time, event = lung2$status - 1, female = lung2$sex - 1,
                    age = lung2$age, ecog = lung2$ph.ecog)
lung2$ecog_f <- factor(lung2$ecog, levels = 0:3)
out$cox <- list(data = as.list(lung2[, c("time", "event", "female", "age", "ecog")]))
for (ties in c("efron", "breslow")) {
  fit <- coxph(Surv(time, event) ~ female + age + ecog_f, data = lung2, ties = ties,
               control = coxph.control(eps = 1e-11, iter.max = 100))
  out$cox[[ties]] <- list(yi = unname(coef(fit)["female"]), vi = vcov(fit)["female", "female"],
                          n = fit$n)
}

# Berkey et al. (1998): two outcomes per trial with their covariance.
dat <- dat.berkey1998
Vb <- bldiag(lapply(split(dat[, c("v1i", "v2i")], dat$trial), as.matrix))
out$berkey <- list(data = list(trial = dat$trial, outcome = as.character(dat$outcome),
                               yi = dat$yi, v1i = dat$v1i, v2i = dat$v2i),
                   names = levels(factor(dat$outcome)), fits = list())
for (st in c("UN", "DIAG")) for (method in c("REML", "ML")) {
  res <- best_rma_mv(dat$yi, Vb, factor(dat$outcome), dat$trial, st, method)
  out$berkey$fits[[paste(st, method, sep = "_")]] <- mv_dict(res, levels(factor(dat$outcome)))
}

writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", na = "null",
                  pretty = FALSE),
           file.path(here, "reference.json"))
cat("wrote", file.path(here, "reference.json"), "\n")
