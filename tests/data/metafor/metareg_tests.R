# Reference values for fedsynth's rma tests, weights, fixed tau^2, R^2, formula
# meta-regression, btt, linear contrasts and anova() (issue 16 part B1, branch mmreg).
# Run once with Debian's r-cran-metafor 3.8-1 (R 4.2.2):
#   Rscript tests/data/metafor/metareg_tests.R   (writes metareg_tests.json next to it)
suppressPackageStartupMessages({library(metafor); library(jsonlite)})
out <- list()
# metafor stops Fisher scoring at |change| <= 1e-5 by default; fedsynth solves exactly
ctl <- list(threshold = 1e-12, maxiter = 1000)
num <- function(x) if (is.null(x)) NULL else unname(as.vector(x))

bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg$ni <- with(dat.bcg, tpos + tneg + cpos + cneg)
mol <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
rau <- dat.raudenbush1985
kon <- dat.konstantopoulos2011
data <- list(
  bcg = data.frame(author = bcg$author, year = bcg$year, ablat = bcg$ablat, alloc = bcg$alloc,
                   ni = bcg$ni, yi = num(bcg$yi), vi = num(bcg$vi)),
  molloy = data.frame(authors = mol$authors, year = mol$year, ni = mol$ni,
                      controls = mol$controls, design = mol$design, a_measure = mol$a_measure,
                      meanage = mol$meanage, quality = mol$quality, yi = num(mol$yi),
                      vi = num(mol$vi)),
  raudenbush = data.frame(author = rau$author, weeks = rau$weeks, setting = rau$setting,
                          tester = rau$tester, yi = num(rau$yi), vi = num(rau$vi)),
  konstantopoulos = data.frame(district = kon$district, school = kon$school, year = kon$year,
                               yi = num(kon$yi), vi = num(kon$vi)))
out$data <- data

fitinfo <- function(res) {
  list(coef = num(coef(res)), names = names(coef(res)), se = num(res$se), zval = num(res$zval),
       pval = num(res$pval), ci_lb = num(res$ci.lb), ci_ub = num(res$ci.ub),
       tau2 = res$tau2, se_tau2 = if (is.null(res$se.tau2)) NA else res$se.tau2,
       QM = res$QM, QMdf = num(res$QMdf), QMp = res$QMp, btt = num(res$btt),
       QE = res$QE, QEp = res$QEp, I2 = res$I2, H2 = res$H2,
       R2 = if (is.null(res$R2)) NA else res$R2, s2w = res$s2w,
       fit_stats_ML = num(res$fit.stats[, "ML"]), fit_stats_REML = num(res$fit.stats[, "REML"]),
       parms = res$parms, k = res$k, p = res$p, vb = num(vcov(res)))
}
case <- function(name, dataset, args, res) {
  out$cases[[name]] <<- c(list(data = dataset, args = args), fitinfo(res))
}
run <- function(name, dataset, args) {
  message(name)
  d <- data[[dataset]]
  call <- c(list(yi = d$yi, vi = d$vi), args)
  if (!is.null(args$mods)) call$mods <- as.formula(args$mods)
  if (!is.null(args$weights)) call$weights <- d[[args$weights]]
  call$data <- d
  call$control <- ctl
  res <- suppressWarnings(do.call(rma, call))
  case(name, dataset, args, res)
  res
}
out$cases <- list()
# 1. tests, weights, weighted = FALSE, fixed tau^2, R^2 of FE
for (m in c("REML", "DL", "ML", "FE")) for (t in c("z", "t", "knha", "adhoc")) {
  run(paste("bcg_ablat", m, t, sep = "_"), "bcg", list(mods = "~ ablat", method = m, test = t))
  run(paste("bcg_int", m, t, sep = "_"), "bcg", list(method = m, test = t))
}
for (t in c("z", "t", "knha", "adhoc")) {
  run(paste("rau_weeks_REML", t, sep = "_"), "raudenbush", list(mods = "~ weeks", test = t))
  run(paste("rau_int_REML", t, sep = "_"), "raudenbush", list(test = t))
  run(paste("bcg_w_ablat", t, sep = "_"), "bcg", list(mods = "~ ablat", weights = "ni", test = t))
  run(paste("bcg_w_int", t, sep = "_"), "bcg", list(weights = "ni", test = t))
  run(paste("bcg_unw_ablat", t, sep = "_"), "bcg", list(mods = "~ ablat", weighted = FALSE, test = t))
  run(paste("bcg_unw_int", t, sep = "_"), "bcg", list(weighted = FALSE, test = t))
}
run("bcg_w_ablat_FE", "bcg", list(mods = "~ ablat", weights = "ni", method = "FE"))
run("bcg_unw_ablat_FE", "bcg", list(mods = "~ ablat", weighted = FALSE, method = "FE"))
run("bcg_unw_int_DL", "bcg", list(weighted = FALSE, method = "DL"))
run("bcg_tau2_ablat", "bcg", list(mods = "~ ablat", tau2 = 0.1))
run("bcg_tau2_ablat_knha", "bcg", list(mods = "~ ablat", tau2 = 0.1, test = "knha"))
run("bcg_tau2_int", "bcg", list(tau2 = 0.1))
run("bcg_tau2_int_t", "bcg", list(tau2 = 0.05, test = "t"))
run("mol_FE_quality", "molloy", list(mods = "~ quality + meanage", method = "FE"))
# 2. formulas, factors, interactions, no intercept
run("bcg_year_alloc", "bcg", list(mods = "~ year + factor(alloc)"))
run("bcg_ablat_x_alloc", "bcg", list(mods = "~ ablat * factor(alloc)", method = "ML"))
run("bcg_noint_alloc", "bcg", list(mods = "~ 0 + factor(alloc)"))
run("bcg_noint_alloc_m1", "bcg", list(mods = "~ factor(alloc) - 1", test = "knha"))
run("bcg_year2", "bcg", list(mods = "~ I(year - 1960) + I((year - 1960)^2)"))
run("mol_design_controls", "molloy", list(mods = "~ factor(design) + controls + meanage"))
run("mol_quality_factor", "molloy", list(mods = "~ factor(quality)", test = "knha"))
run("rau_weeks_tester", "raudenbush", list(mods = "~ weeks * tester", method = "ML"))
run("kon_year", "konstantopoulos", list(mods = "~ I(year - 2000)", method = "REML"))
run("rau_relevel", "raudenbush", list(mods = "~ relevel(factor(setting), ref = \"indiv\")"))
# 3. btt, linear contrasts, anova of nested fits
out$btt <- list()
bttcase <- function(name, dataset, mods, btt, test = "z", method = "REML") {
  d <- data[[dataset]]
  res <- rma(yi, vi, mods = as.formula(mods), data = d, btt = btt, test = test, method = method,
             control = ctl)
  a <- anova(res, btt = btt)
  out$btt[[name]] <<- list(data = dataset, mods = mods, btt = btt, test = test, method = method,
                           QM = res$QM, QMdf = num(res$QMdf), QMp = res$QMp, btt_used = num(res$btt),
                           anova_QM = a$QM, anova_QMdf = num(a$QMdf), anova_QMp = a$QMp)
}
bttcase("bcg_alloc", "bcg", "~ ablat + factor(alloc)", 3:4)
bttcase("bcg_alloc_knha", "bcg", "~ ablat + factor(alloc)", 3:4, "knha")
bttcase("bcg_alloc_t", "bcg", "~ ablat + factor(alloc)", 3:4, "t")
bttcase("bcg_alloc_adhoc", "bcg", "~ ablat + factor(alloc)", 3:4, "adhoc")
bttcase("bcg_string", "bcg", "~ ablat + factor(alloc)", "alloc")
bttcase("bcg_neg", "bcg", "~ ablat + factor(alloc)", -(1:2))
bttcase("bcg_int_incl", "bcg", "~ ablat * factor(alloc)", c(1, 5, 6), "knha", "ML")
bttcase("mol_design", "molloy", "~ factor(design) + meanage", 2)
out$contrasts <- list()
ctr <- function(name, dataset, mods, X, test = "z", rhs = 0) {
  d <- data[[dataset]]
  res <- rma(yi, vi, mods = as.formula(mods), data = d, test = test, control = ctl)
  a <- anova(res, X = X, rhs = rhs)
  out$contrasts[[name]] <<- list(data = dataset, mods = mods, X = X, test = test, rhs = rhs,
                                 Xb = num(a$Xb), se = num(a$se), zval = num(a$zval),
                                 pval = num(a$pval), QM = a$QM, QMdf = num(a$QMdf), QMp = a$QMp,
                                 hyp = num(a$hyp[[1]]))
}
ctr("bcg_alloc_diff", "bcg", "~ 0 + factor(alloc)", rbind(c(1, -1, 0), c(1, 0, -1), c(0, 1, -1)))
ctr("bcg_alloc_diff_knha", "bcg", "~ 0 + factor(alloc)", rbind(c(1, -1, 0), c(0, 1, -1)), "knha")
ctr("bcg_ablat_pred", "bcg", "~ ablat", rbind(c(1, 10), c(1, 30), c(1, 50)))
ctr("bcg_ablat_rhs", "bcg", "~ ablat", rbind(c(0, 1)), "z", -0.02)
ctr("bcg_ablat_singular", "bcg", "~ ablat", rbind(c(1, 10), c(2, 20)))
out$anova <- list()
lrt <- function(name, dataset, full, reduced, method, test = "z", refit = FALSE) {
  d <- data[[dataset]]
  f <- rma(yi, vi, mods = as.formula(full), data = d, method = method, test = test,
           control = ctl)
  r <- if (reduced == "~ 1") rma(yi, vi, data = d, method = method, test = test, control = ctl)
       else rma(yi, vi, mods = as.formula(reduced), data = d, method = method, test = test,
                control = ctl)
  a <- suppressWarnings(anova(f, r, refit = refit))
  out$anova[[name]] <<- list(data = dataset, full = full, reduced = reduced, method = method,
                             test = test, refit = refit,
                             fit_stats_f = num(a$fit.stats.f), fit_stats_r = num(a$fit.stats.r),
                             parms_f = a$parms.f, parms_r = a$parms.r, LRT = a$LRT, pval = a$pval,
                             QE_f = a$QE.f, QE_r = a$QE.r, tau2_f = a$tau2.f, tau2_r = a$tau2.r,
                             R2 = a$R2)
}
lrt("bcg_ML_ablat_alloc", "bcg", "~ ablat + factor(alloc)", "~ ablat", "ML")
lrt("bcg_ML_ablat_int", "bcg", "~ ablat", "~ 1", "ML")
lrt("bcg_FE_ablat_int", "bcg", "~ ablat", "~ 1", "FE")
# anova(f, r, refit = TRUE) of two REML fits refits both with ML (update() cannot refit
# these calls here, so the ML fits are compared directly: the same numbers)
lrt("bcg_REML_refit", "bcg", "~ ablat + year", "~ ablat", "ML")
out$anova$bcg_REML_refit$method <- "REML"
out$anova$bcg_REML_refit$refit <- TRUE
lrt("mol_ML", "molloy", "~ factor(design) + meanage", "~ meanage", "ML")
# same fixed effects under REML: a comparison of two REML fits with the same X
out$anova_same_X <- local({
  d <- data$bcg
  f <- rma(yi, vi, mods = ~ ablat, data = d, method = "REML", control = ctl)
  r <- rma(yi, vi, mods = ~ ablat, data = d, method = "REML", tau2 = 0, control = ctl)
  a <- anova(f, r)
  list(fit_stats_f = num(a$fit.stats.f), fit_stats_r = num(a$fit.stats.r), LRT = a$LRT,
       pval = a$pval, parms_f = a$parms.f, parms_r = a$parms.r, R2 = a$R2)
})
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null"),
           "tests/data/metafor/metareg_tests.json")
