# Reference values for the rare-event methods (fedsynth issue 15): Mantel-Haenszel, Peto,
# the binomial-normal GLMMs of metafor::rma.glmm and the (profile) log-likelihoods a site
# releases instead of an estimate. Run once from this folder:
#     Rscript make_reference.R        (R 4.2.2, Debian r-cran-metafor 3.8-1, r-cran-lme4,
#                                      r-cran-biasedurn, r-cran-survival, r-cran-jsonlite)
# It writes reference.json and the patient-level CSV files it uses (likelihood_*.csv).
suppressMessages({
  library(metafor)
  library(survival)
  library(jsonlite)
})
options(warn = 1)

# ------------------------------------------------------------------ data sets (2x2 tables)
tab <- function(d, name, source, cm_el = TRUE) {
  d <- d[!(is.na(d$ai) | is.na(d$ci) | is.na(d$n1i) | is.na(d$n2i)), ]
  list(name = name, source = source, study = as.character(d$study),
       ai = as.numeric(d$ai), bi = as.numeric(d$n1i - d$ai),
       ci = as.numeric(d$ci), di = as.numeric(d$n2i - d$ci), cm_el = cm_el)
}
y6 <- dat.yusuf1985[dat.yusuf1985$table == "6", ]; y6$study <- y6$trial
y12b <- dat.yusuf1985[dat.yusuf1985$table == "12b", ]; y12b$study <- y12b$trial
n07 <- dat.nielweise2007; n07$study <- n07$author

# Simulated rare-event meta-analyses: binomial arms, baseline risk 0.5-3%, random log OR.
simulate <- function(seed, k, mu, tau, risk, nmin, nmax) {
  set.seed(seed)
  n1 <- sample(nmin:nmax, k, replace = TRUE); n2 <- sample(nmin:nmax, k, replace = TRUE)
  p0 <- runif(k, risk[1], risk[2])
  theta <- rnorm(k, mu, tau)
  p1 <- plogis(qlogis(p0) + theta)
  data.frame(study = sprintf("site-%02d", seq_len(k)), ai = rbinom(k, n1, p1), n1i = n1,
             ci = rbinom(k, n2, p0), n2i = n2)
}
sets <- list(
  tab(y6, "yusuf1985_table6", "metafor::dat.yusuf1985, table 6 (beta blockers, total mortality, short-term trials); trial Snow 1 has no data and is omitted", cm_el = FALSE),
  tab(n07, "nielweise2007", "metafor::dat.nielweise2007 (anti-infective catheters, catheter-related bloodstream infections)"),
  tab(y12b, "yusuf1985_table12b", "metafor::dat.yusuf1985, table 12b; trials without data omitted", cm_el = FALSE),
  tab(simulate(2022, 12, -0.4, 0.9, c(0.005, 0.03), 60, 400), "sim_rare_a", "simulated: 12 sites, risk 0.5-3%, log OR ~ N(-0.4, 0.9^2), seed 2022"),
  tab(simulate(15, 8, 0.6, 1.2, c(0.01, 0.05), 40, 150), "sim_rare_b", "simulated: 8 sites, risk 1-5%, log OR ~ N(0.6, 1.2^2), seed 15"),
  tab(simulate(7, 20, 0.2, 0.5, c(0.002, 0.01), 100, 800), "sim_rare_c", "simulated: 20 sites, risk 0.2-1%, log OR ~ N(0.2, 0.5^2), seed 7")
)

num <- function(x) if (is.null(x) || length(x) == 0 || is.na(x)) NA else as.numeric(x)
common <- function(r) list(estimate = num(r$beta), se = num(r$se), ci_lb = num(r$ci.lb),
                           ci_ub = num(r$ci.ub), zval = num(r$zval), pval = num(r$pval))

cases <- list()
for (s in sets) {
  d <- data.frame(ai = s$ai, bi = s$bi, ci = s$ci, di = s$di)
  out <- list()
  for (measure in c("OR", "RR", "RD")) {
    r <- rma.mh(ai = ai, bi = bi, ci = ci, di = di, data = d, measure = measure)
    o <- c(common(r), list(Q = num(r$QE), Q_pval = num(r$QEp), I2 = num(r$I2), H2 = num(r$H2),
                           k = r$k, k_yi = r$k.yi))
    if (measure == "OR") o <- c(o, list(cmh = num(r$MH), cmh_pval = num(r$MHp),
                                        tarone = num(r$TA), tarone_pval = num(r$TAp),
                                        breslow_day = num(r$BD), breslow_day_pval = num(r$BDp),
                                        k_pos = r$k.pos))
    out[[paste0("MH_", measure)]] <- o
  }
  r <- rma.peto(ai = ai, bi = bi, ci = ci, di = di, data = d)
  out$PETO <- c(common(r), list(Q = num(r$QE), Q_pval = num(r$QEp), I2 = num(r$I2),
                                H2 = num(r$H2), k = r$k, k_yi = r$k.yi))
  glmm <- function(model, control) {
    r <- try(rma.glmm(ai = ai, bi = bi, ci = ci, di = di, data = d, measure = "OR",
                      model = model, control = control), silent = TRUE)
    if (inherits(r, "try-error")) return(list(error = as.character(r)))
    c(common(r), list(tau2 = num(r$tau2), se_tau2 = num(r$se.tau2), I2 = num(r$I2),
                      H2 = num(r$H2), vt = num(r$vt),
                      QE_Wld = num(r$QE.Wld), QEp_Wld = num(r$QEp.Wld),
                      QE_LRT = num(r$QE.LRT), QEp_LRT = num(r$QEp.LRT), QE_df = num(r$QE.df),
                      ll = num(r$fit.stats["ll", "ML"]), k = r$k))
  }
  # metafor's defaults (nAGQ = 7; glmer's optimizers; nlminb + integrate() for CM.EL).
  # UM.FS: glmer's default Nelder-Mead stage stops 1e-5 to 4e-4 short of the maximum on some
  # of these data sets, so the same fit with a tight bobyqa is recorded too (tests use it).
  out$GLMM_UM.FS <- glmm("UM.FS", list())
  out$GLMM_UM.FS_tight <- glmm("UM.FS", list(glmerCtrl = list(
    optimizer = "bobyqa", optCtrl = list(rhoend = 1e-11, maxfun = 1e6),
    check.conv.grad = lme4::.makeCC("ignore", tol = 1e-3))))
  # CM.EL only where tau^2 > 0: at tau^2 = 0 metafor's nlminb does not converge (yusuf1985
  # table 6: error) or returns a degenerate Hessian (table 12b); fedsynth reports tau2 = 0.
  if (s$cm_el) {
    r <- glmm("CM.EL", list())
    # metafor's se comes from numDeriv's Richardson Hessian (steps down to ~1e-6) of a
    # likelihood computed by integrate() at rel.tol 1.2e-4: its noise moves se by up to 3e-4
    # (0.351068 with the defaults, 0.350960 with integrate's rel.tol = 1e-10 on
    # nielweise2007). The reference information is therefore recomputed at metafor's
    # estimate with integrate(rel.tol = 1e-12) and fixed steps of 1e-2 (Richardson, r = 4).
    if (is.null(r$error)) {
      keep <- !((d$ai == 0 & d$ci == 0) | (d$bi == 0 & d$di == 0))
      f <- function(p) metafor:::.dnchg(p, ai = d$ai[keep], bi = d$bi[keep], ci = d$ci[keep],
        di = d$di[keep], X.fit = cbind(rep(1, sum(keep))), random = TRUE, verbose = FALSE,
        digits = c(est = 4, fit = 4), dnchgcalc = "dFNCHypergeo", dnchgprec = 1e-14,
        intCtrl = list(lower = -Inf, upper = Inf, subdivisions = 1000L, rel.tol = 1e-12))
      h <- numDeriv::hessian(f, c(r$estimate, log(r$tau2)),
                             method.args = list(eps = 1e-4, d = 0.01, r = 4, v = 2,
                                                zero.tol = sqrt(.Machine$double.eps)))
      V <- solve(h)
      crit <- qnorm(0.975)
      se <- sqrt(V[1, 1])
      r$information <- list(se = se, se_tau2 = sqrt(V[2, 2]) * r$tau2,
                            zval = r$estimate / se, pval = 2 * pnorm(-abs(r$estimate / se)),
                            ci_lb = r$estimate - crit * se, ci_ub = r$estimate + crit * se)
    }
    out$GLMM_CM.EL <- r
  }
  cat(s$name, "done", format(Sys.time()), "\n")
  s$cm_el <- NULL
  cases[[length(cases) + 1]] <- c(s, list(results = out))
}

# ------------------------------------------- likelihoods a site releases (patient-level data)
grid <- seq(-3, 3, by = 0.25)
lik <- list()

# (1) 2x2 table: profile log-likelihood of the log odds ratio (binomial arms, the control
# arm's log odds profiled out) = logLik of glm(cbind(events, non-events) ~ 1, offset = b * x).
profile_2x2 <- function(ai, bi, ci, di) {
  y <- cbind(c(ai, ci), c(bi, di)); x <- c(1, 0)
  sapply(grid, function(b) as.numeric(logLik(glm(y ~ 1, offset = b * x, family = binomial))))
}
lik$two_by_two <- list(
  list(name = "with_events", ai = 4, bi = 96, ci = 9, di = 91, grid = grid,
       loglik = profile_2x2(4, 96, 9, 91)),
  list(name = "zero_exposed", ai = 0, bi = 50, ci = 3, di = 47, grid = grid,
       loglik = profile_2x2(0, 50, 3, 47)))

# (2) adjusted logistic and Cox models on a simulated site.
set.seed(4711)
n <- 600
site <- data.frame(age = round(rnorm(n, 60, 10)), sex = rbinom(n, 1, 0.5),
                   treated = rbinom(n, 1, 0.4))
lp <- -4 + 0.03 * (site$age - 60) + 0.4 * site$sex + 0.7 * site$treated
site$outcome <- rbinom(n, 1, plogis(lp))
haz <- 0.01 * exp(0.03 * (site$age - 60) + 0.4 * site$sex - 0.5 * site$treated)
tt <- rexp(n, haz); cens <- runif(n, 5, 30)
site$time <- round(pmin(tt, cens), 1)         # rounded: tied event times (Efron vs Breslow)
site$event <- as.integer(tt <= cens)
write.csv(site, "likelihood_site.csv", row.names = FALSE)
# a site without events among the treated (monotone Cox likelihood; no finite estimate)
zero <- site
zero$event[zero$treated == 1] <- 0L
zero$outcome[zero$treated == 1] <- 0L
write.csv(zero, "likelihood_site_zero.csv", row.names = FALSE)

prof_logistic <- function(d) sapply(grid, function(b) as.numeric(logLik(
  glm(outcome ~ age + sex + offset(b * treated), family = binomial, data = d))))
prof_cox <- function(d, ties, covs = TRUE) sapply(grid, function(b) {
  f <- if (covs) Surv(time, event) ~ age + sex + offset(b * treated)
       else Surv(time, event) ~ offset(b * treated)
  fit <- coxph(f, data = d, ties = ties)
  tail(fit$loglik, 1)
})
# epsilon: glm's default (1e-8) leaves ~1e-4 in the standard errors (its vcov uses the
# weights of the previous iterate); converged further, se is exact to rounding
fit_glm <- glm(outcome ~ treated + age + sex, family = binomial, data = site,
               control = glm.control(epsilon = 1e-14, maxit = 100))
fit_efron <- coxph(Surv(time, event) ~ treated + age + sex, data = site, ties = "efron")
fit_breslow <- coxph(Surv(time, event) ~ treated + age + sex, data = site, ties = "breslow")
fit_uni <- coxph(Surv(time, event) ~ treated, data = site, ties = "efron")
lik$logistic <- list(file = "likelihood_site.csv", grid = grid, loglik = prof_logistic(site),
                     estimate = unname(coef(fit_glm)["treated"]),
                     se = unname(sqrt(vcov(fit_glm)["treated", "treated"])),
                     loglik_zero = prof_logistic(zero))
lik$cox_efron <- list(file = "likelihood_site.csv", grid = grid,
                      loglik = prof_cox(site, "efron"),
                      estimate = unname(coef(fit_efron)["treated"]),
                      se = unname(sqrt(vcov(fit_efron)["treated", "treated"])),
                      loglik_zero = prof_cox(zero, "efron"))
lik$cox_breslow <- list(file = "likelihood_site.csv", grid = grid,
                        loglik = prof_cox(site, "breslow"),
                        estimate = unname(coef(fit_breslow)["treated"]),
                        se = unname(sqrt(vcov(fit_breslow)["treated", "treated"])),
                        loglik_zero = prof_cox(zero, "breslow"))
lik$cox_univariable <- list(file = "likelihood_site.csv", grid = grid,
                            loglik = prof_cox(site, "efron", covs = FALSE),
                            estimate = unname(coef(fit_uni)), se = unname(sqrt(vcov(fit_uni)[1, 1])))

out <- list(
  provenance = list(
    generated_by = "tests/data/rare/make_reference.R",
    R = R.version.string,
    packages = lapply(setNames(nm = c("metafor", "lme4", "BiasedUrn", "survival", "numDeriv",
                                      "jsonlite")), function(p) as.character(packageVersion(p)))),
  meta = cases, likelihood = lik)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, na = "null", pretty = FALSE),
           "reference.json")
cat("written reference.json\n")
