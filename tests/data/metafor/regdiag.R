# Reference values of fedsynth.meta.regdiag (influence, rstandard, rstudent, hatvalues,
# weights, cooks.distance, dfbetas, blup, ranef, confint of meta-regression models) from
# metafor 3.8-1. Run once: Rscript tests/data/metafor/regdiag.R  (writes regdiag.json)
suppressPackageStartupMessages({library(metafor); library(jsonlite)})
ctl <- list(threshold = 1e-12, maxiter = 1000)
num <- function(x) unname(as.vector(as.matrix(x)))
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg$ni <- with(dat.bcg, tpos + tneg + cpos + cneg)
mol <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
data <- list(
  bcg = data.frame(ablat = bcg$ablat, alloc = bcg$alloc, year = bcg$year, ni = bcg$ni,
                   yi = num(bcg$yi), vi = num(bcg$vi)),
  molloy = data.frame(meanage = mol$meanage, quality = mol$quality, yi = num(mol$yi),
                      vi = num(mol$vi)))
out <- list(data = data, cases = list())
dcase <- function(name, dataset, mods, method = "REML", test = "z", weights = NULL,
                  weighted = TRUE, tau2 = NULL) {
  d <- data[[dataset]]
  args <- list(yi = d$yi, vi = d$vi, mods = as.formula(mods), data = d, method = method,
               test = test, weighted = weighted, control = ctl)
  if (!is.null(weights)) args$weights <- d[[weights]]
  if (!is.null(tau2)) args$tau2 <- tau2
  res <- do.call(rma, args)
  inf <- influence(res)
  rs <- rstandard(res)
  rt <- rstudent(res)
  case <- list(data = dataset, mods = mods, method = method, test = test, weights = weights,
               weighted = weighted, tau2 = tau2,
               rstudent = num(inf$inf$rstudent), dffits = num(inf$inf$dffits),
               cook_d = num(inf$inf$cook.d), cov_r = num(inf$inf$cov.r),
               tau2_del = num(inf$inf$tau2.del), QE_del = num(inf$inf$QE.del),
               hat = num(inf$inf$hat), weight = num(inf$inf$weight),
               is_infl = num(inf$is.infl),
               rstandard_resid = num(rs$resid), rstandard_se = num(rs$se), rstandard_z = num(rs$z),
               rstudent_resid = num(rt$resid), rstudent_se = num(rt$se), rstudent_z = num(rt$z),
               hatvalues = num(hatvalues(res)), weights_pct = num(weights(res)),
               cooks = num(cooks.distance(res)), dfbetas = num(dfbetas(res)))
  if (is.null(weights) && weighted) {
    b <- blup(res); r <- ranef(res)
    case$blup <- list(pred = num(b$pred), se = num(b$se), pi_lb = num(b$pi.lb), pi_ub = num(b$pi.ub))
    case$ranef <- list(pred = num(r$pred), se = num(r$se), pi_lb = num(r$pi.lb), pi_ub = num(r$pi.ub))
  }
  if (method != "FE" && is.null(tau2)) {
    ci <- confint(res, control = list(tol = 1e-12))$random  # uniroot tol: default 1.2e-4
    case$confint <- list(tau2 = num(ci["tau^2", ]), tau = num(ci["tau", ]),
                         I2 = num(ci["I^2(%)", ]), H2 = num(ci["H^2", ]))
  }
  out$cases[[name]] <<- case
}
dcase("bcg_ablat", "bcg", "~ ablat")
dcase("bcg_ablat_alloc_knha", "bcg", "~ ablat + factor(alloc)", test = "knha")
dcase("bcg_year_DL_t", "bcg", "~ year", method = "DL", test = "t")
dcase("bcg_ablat_FE", "bcg", "~ ablat", method = "FE")
dcase("bcg_ablat_weights", "bcg", "~ ablat", weights = "ni")
dcase("bcg_ablat_unweighted_adhoc", "bcg", "~ ablat", weighted = FALSE, test = "adhoc")
dcase("bcg_ablat_tau2", "bcg", "~ ablat", tau2 = 0.05)
dcase("mol_meanage_ML", "molloy", "~ meanage + quality", method = "ML")
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null"),
           "tests/data/metafor/regdiag.json")
