# Reference values of fedsynth's predict (newmods, transf, addx, intercept) from metafor
# 3.8-1. Run once: Rscript tests/data/metafor/predict.R  (writes predict.json next to it)
suppressPackageStartupMessages({library(metafor); library(jsonlite)})
ctl <- list(threshold = 1e-12, maxiter = 1000)
num <- function(x) unname(as.vector(x))
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
plo <- escalc(measure = "PLO", xi = cpos, ni = cpos + cneg, data = dat.bcg)
mol <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
data <- list(
  bcg = data.frame(ablat = bcg$ablat, alloc = bcg$alloc, year = bcg$year, yi = num(bcg$yi),
                   vi = num(bcg$vi)),
  plo = data.frame(ablat = plo$ablat, yi = num(plo$yi), vi = num(plo$vi)),
  molloy = data.frame(meanage = mol$meanage, design = mol$design, yi = num(mol$yi),
                      vi = num(mol$vi)))
out <- list(data = data, cases = list())
pcase <- function(name, dataset, mods, newmods = NULL, transf = NULL, intercept = TRUE,
                  addx = FALSE, test = "z", method = "REML", level = 95) {
  d <- data[[dataset]]
  res <- if (is.null(mods)) rma(yi, vi, data = d, test = test, method = method, control = ctl)
         else rma(yi, vi, mods = as.formula(mods), data = d, test = test, method = method,
                  control = ctl)
  args <- list(object = res, addx = addx, level = level)
  if (!is.null(newmods)) { args$newmods <- newmods; args$intercept <- intercept }
  if (!is.null(transf)) args$transf <- get(transf)
  pr <- do.call(predict, args)
  out$cases[[name]] <<- list(data = dataset, mods = mods, newmods = newmods, transf = transf,
                             intercept = intercept, addx = addx, test = test, method = method,
                             level = level, pred = num(pr$pred), se = num(pr$se),
                             ci_lb = num(pr$ci.lb), ci_ub = num(pr$ci.ub),
                             pi_lb = num(pr$pi.lb), pi_ub = num(pr$pi.ub),
                             X = if (addx) unname(pr$X) else NULL)
}
pcase("ablat_new", "bcg", "~ ablat", newmods = c(10, 30, 50))
pcase("ablat_new_exp_addx", "bcg", "~ ablat", newmods = c(10, 30, 50), transf = "exp",
      addx = TRUE)
pcase("ablat_alloc_knha", "bcg", "~ ablat + factor(alloc)",
      newmods = rbind(c(30, 1, 0), c(30, 0, 1), c(45, 0, 0)), test = "knha", addx = TRUE)
pcase("ablat_alloc_noint", "bcg", "~ ablat + factor(alloc)",
      newmods = rbind(c(30, 1, 0), c(30, 0, 1)), intercept = FALSE)
pcase("ablat_fitted", "bcg", "~ ablat")
pcase("int_exp", "bcg", NULL, transf = "exp")
pcase("int_t_90", "bcg", NULL, test = "t", level = 90)
pcase("plo_ilogit", "plo", "~ ablat", newmods = c(20, 40), transf = "transf.ilogit")
pcase("mol_ztor", "molloy", "~ meanage", newmods = c(30, 50, 70), transf = "transf.ztor",
      test = "adhoc")
pcase("ablat_FE", "bcg", "~ ablat", newmods = c(20), method = "FE")
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null"),
           "tests/data/metafor/predict.json")
