# Reference values for the small-study and bias tools of issue 16: fsn (Rosenthal, Orwin,
# Rosenberg), regtest (predictors sei, vi, ni, ninv, sqrtni, sqrtninv; models rma, lm),
# trimfill (estimators L0, R0, Q0; side given or estimated), hc (Henmi-Copas) and selmodel
# (step function with given steps, beta) by ML.
#
# Data (exported into the JSON): bcg (dat.bcg, log risk ratios), hackshaw1998
# (dat.hackshaw1998, log odds ratios; the example of metafor's selmodel help page),
# molloy2014 (dat.molloy2014, Fisher's z with ni), fine1993 (dat.fine1993, log odds ratios
# of the first outcome: e1i of nei vs c1i of nci).
#
# hc: metafor's own root tolerance (eps^0.25) is loose, so the reference uses
# control = list(tol = 1e-12) (the exact interval). selmodel: integration at rel.tol 1e-12
# and optim's reltol 1e-12 so that the ML estimates are the exact optimum.
#
# Run: Rscript tests/data/metafor/bias_tools.R   (R 4.2.2, metafor 3.8-1, numDeriv,
# jsonlite). Writes tests/data/metafor/bias_tools.json.

suppressPackageStartupMessages({library(metafor); library(jsonlite)})

bcg <- escalc("RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg$ni <- with(dat.bcg, tpos + tneg + cpos + cneg)
hack <- dat.hackshaw1998
mol <- escalc("ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
fine <- escalc("OR", ai = e1i, n1i = nei, ci = c1i, n2i = nci, data = dat.fine1993)
fine <- fine[!is.na(fine$yi), ]   # one study lacks the outcome
fine$ni <- fine$nei + fine$nci
data <- list(bcg = data.frame(yi = c(bcg$yi), vi = bcg$vi, ni = bcg$ni),
             hackshaw1998 = data.frame(yi = hack$yi, vi = hack$vi),
             molloy2014 = data.frame(yi = c(mol$yi), vi = mol$vi, ni = mol$ni),
             fine1993 = data.frame(yi = c(fine$yi), vi = fine$vi, ni = fine$ni))

num <- function(x) if (is.null(x)) NA_real_ else as.numeric(x)
cases <- list()
add <- function(kind, dataset, args, values) {
  cases[[length(cases) + 1]] <<- list(kind = kind, dataset = dataset, args = args,
                                      values = values)
}

for (ds in names(data)) {
  d <- data[[ds]]
  for (type in c("Rosenthal", "Orwin", "Rosenberg")) {
    r <- fsn(d$yi, d$vi, type = type)
    add("fsn", ds, list(type = type),
        list(fsnum = num(r$fsnum), pval = num(r$pval), meanes = num(r$meanes),
             target = num(r$target)))
  }
  r <- fsn(d$yi, d$vi, type = "Orwin", target = 0.1 * sign(mean(d$yi)), weighted = TRUE)
  add("fsn", ds, list(type = "Orwin", target = 0.1 * sign(mean(d$yi)), weighted = TRUE),
      list(fsnum = num(r$fsnum), pval = NA_real_, meanes = num(r$meanes),
           target = num(r$target)))
  r <- fsn(d$yi, d$vi, type = "Rosenthal", alpha = 0.01)
  add("fsn", ds, list(type = "Rosenthal", alpha = 0.01),
      list(fsnum = num(r$fsnum), pval = num(r$pval), meanes = NA_real_, target = NA_real_))

  preds <- c("sei", "vi")
  if (!is.null(d$ni)) preds <- c(preds, "ni", "ninv", "sqrtni", "sqrtninv")
  for (model in c("rma", "lm")) for (pred in preds) {
    r <- if (is.null(d$ni)) regtest(d$yi, d$vi, model = model, predictor = pred)
         else regtest(d$yi, d$vi, ni = d$ni, model = model, predictor = pred)
    add("regtest", ds, list(model = model, predictor = pred),
        list(zval = num(r$zval), pval = num(r$pval), dfs = num(r$dfs), est = num(r$est),
             ci_lb = num(r$ci.lb), ci_ub = num(r$ci.ub)))
  }
  r <- regtest(d$yi, d$vi, model = "rma", predictor = "sei", method = "DL", test = "knha")
  add("regtest", ds, list(model = "rma", predictor = "sei", method = "DL", test = "knha"),
      list(zval = num(r$zval), pval = num(r$pval), dfs = num(r$dfs), est = num(r$est),
           ci_lb = num(r$ci.lb), ci_ub = num(r$ci.ub)))

  for (method in c("REML", "FE")) for (est in c("L0", "R0", "Q0")) {
    for (side in list(NULL, "left", "right")) {
      fit <- rma(d$yi, d$vi, method = method)
      r <- tryCatch(if (is.null(side)) trimfill(fit, estimator = est)
                    else trimfill(fit, estimator = est, side = side),
                    error = function(e) NULL)
      if (is.null(r)) next
      args <- list(method = method, estimator = est)
      if (!is.null(side)) args$side <- side
      add("trimfill", ds, args,
          list(k0 = num(r$k0), se_k0 = num(r$se.k0), p_k0 = num(r$p.k0), side = r$side,
               estimate = num(r$beta), se = num(r$se), zval = num(r$zval),
               pval = num(r$pval), ci_lb = num(r$ci.lb), ci_ub = num(r$ci.ub),
               tau2 = num(r$tau2), filled_yi = if (r$k0 > 0) tail(c(r$yi), r$k0) else list(),
               filled_vi = if (r$k0 > 0) tail(r$vi, r$k0) else list()))
    }
  }

  r <- hc(rma(d$yi, d$vi), control = list(tol = 1e-12))
  add("hc", ds, list(),
      list(beta = num(r$beta), se = num(r$se), ci_lb = num(r$ci.lb), ci_ub = num(r$ci.ub),
           tau2 = num(r$tau2), beta_rma = num(r$beta.rma), ci_lb_rma = num(r$ci.lb.rma),
           ci_ub_rma = num(r$ci.ub.rma), tau2_rma = num(r$tau2.rma)))
}

sel_case <- function(ds, type, steps = NULL, alternative = "greater") {
  d <- data[[ds]]
  fit <- rma(d$yi, d$vi, method = "ML")
  ctrl <- list(intCtrl = list(rel.tol = 1e-12, subdivisions = 1000L), reltol = 1e-12,
               maxit = 10000)
  r <- tryCatch(if (is.null(steps)) selmodel(fit, type = type, alternative = alternative,
                                             control = ctrl)
                else selmodel(fit, type = type, steps = steps, alternative = alternative,
                              control = ctrl),
                error = function(e) {cat("selmodel failed:", ds, type, "\n"); NULL})
  if (is.null(r)) return(invisible())
  args <- list(type = type, alternative = alternative)
  if (!is.null(steps)) args$steps <- steps
  add("selmodel", ds, args,
      list(beta = num(r$beta), se = num(r$se), tau2 = num(r$tau2), se_tau2 = num(r$se.tau2),
           delta = num(r$delta), se_delta = num(r$se.delta), ll = num(r$ll),
           ll0 = num(r$ll0), LRT = num(r$LRT), LRTp = num(r$LRTp),
           ptable = if (is.null(steps)) list() else r$ptable$k))
}
sel_case("hackshaw1998", "beta")
sel_case("hackshaw1998", "stepfun", c(0.025, 1))
sel_case("hackshaw1998", "stepfun", c(0.025, 0.5, 1))
sel_case("bcg", "stepfun", c(0.05, 1), "less")
sel_case("bcg", "beta", NULL, "less")
sel_case("molloy2014", "stepfun", c(0.05, 0.5, 1), "two.sided")

exact <- function(x) {
  if (is.list(x)) return(lapply(x, exact))
  if (is.double(x) && !is.null(x)) {
    txt <- ifelse(is.na(x), "null", sprintf("%.17g", x))
    return(structure(if (length(x) == 1) txt else paste0("[", paste(txt, collapse = ", "),
                                                         "]"), class = "json"))
  }
  x
}
doc <- list(provenance = paste0("tests/data/metafor/bias_tools.R; ", R.version.string,
                                "; metafor ", as.character(packageVersion("metafor")),
                                "; numDeriv ", as.character(packageVersion("numDeriv"))),
            data = lapply(data, as.list), cases = cases)
writeLines(toJSON(exact(doc), auto_unbox = TRUE, json_verbatim = TRUE, null = "null",
                  pretty = TRUE, digits = NA), "tests/data/metafor/bias_tools.json")
cat("wrote tests/data/metafor/bias_tools.json:", length(cases), "cases\n")
