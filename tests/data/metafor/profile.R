# Reference values of fedsynth.meta.profile (profile-likelihood CIs of tau² and the profile
# of the log-likelihood) from metafor 3.8-1. Run once: Rscript tests/data/metafor/profile.R
suppressPackageStartupMessages({library(metafor); library(jsonlite)})
ctl <- list(threshold = 1e-12, maxiter = 1000)
num <- function(x) unname(as.vector(as.matrix(x)))
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
mol <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
rau <- dat.raudenbush1985
data <- list(
  bcg = data.frame(ablat = bcg$ablat, alloc = bcg$alloc, yi = num(bcg$yi), vi = num(bcg$vi)),
  molloy = data.frame(meanage = mol$meanage, yi = num(mol$yi), vi = num(mol$vi)),
  raudenbush = data.frame(weeks = rau$weeks, yi = num(rau$yi), vi = num(rau$vi)))
out <- list(data = data, cases = list())
pcase <- function(name, dataset, mods, method = "REML") {
  d <- data[[dataset]]
  res <- if (mods == "~ 1") rma(yi, vi, data = d, method = method, control = ctl)
         else rma(yi, vi, mods = as.formula(mods), data = d, method = method, control = ctl)
  ci <- confint(res, type = "PL", control = list(tol = 1e-12))$random
  pr <- profile(res, progbar = FALSE, plot = FALSE)
  out$cases[[name]] <<- list(data = dataset, mods = mods, method = method,
                             tau2 = num(ci["tau^2", ]), tau = num(ci["tau", ]),
                             I2 = num(ci["I^2(%)", ]), H2 = num(ci["H^2", ]),
                             profile_tau2 = num(pr$tau2), profile_ll = num(pr$ll))
}
pcase("bcg_int_REML", "bcg", "~ 1")
pcase("bcg_ablat_REML", "bcg", "~ ablat")
pcase("bcg_ablat_ML", "bcg", "~ ablat", "ML")
pcase("bcg_alloc_REML", "bcg", "~ factor(alloc)")
pcase("mol_meanage_REML", "molloy", "~ meanage")
pcase("rau_weeks_ML", "raudenbush", "~ weeks", "ML")
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null"),
           "tests/data/metafor/profile.json")
