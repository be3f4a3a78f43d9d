# Reference values for rma.mv (multilevel and multivariate models), multilevel I² and
# cluster-robust variances (metafor's robust(), default CR1 and clubSandwich's CR2) of
# issue 16 part B2.
#
# Data (exported into the JSON): konstantopoulos2011 (dat.konstantopoulos2011: schools
# within districts), berkey1998 (dat.berkey1998: two correlated outcomes per trial, with
# the within-trial covariance from v1i/v2i), assink2016 (dat.assink2016: effects within
# studies), bcg (dat.bcg, log risk ratios, for robust() on an rma.uni fit).
#
# The optimiser is run with nlminb's rel.tol = 1e-12 where it converges (the exact optimum;
# metafor's default stops ~1e-6 relative away for struct = "UN"), else rel.tol 1e-10, else
# metafor's default; the control used is recorded per fit. The rma.uni fits use Fisher
# scoring with threshold 1e-12 (metafor's default 1e-5 leaves tau² ~1e-5 relative off).
# Designs are exported as matrices (model.matrix) so the tests do not depend on a formula
# parser.
#
# Run: Rscript tests/data/metafor/rma_mv.R   (R 4.2.2, metafor 3.8-1, clubSandwich,
# jsonlite). Writes tests/data/metafor/rma_mv.json.

suppressPackageStartupMessages({library(metafor); library(clubSandwich); library(jsonlite)})

controls <- list(list(rel.tol = 1e-12), list(rel.tol = 1e-10), list())
fit_mv <- function(...) {
  cl <- match.call()
  cl[[1]] <- quote(rma.mv)
  for (ctrl in controls) {
    cl$control <- ctrl
    r <- tryCatch(eval(cl, parent.frame()), error = function(e) NULL)
    if (!is.null(r)) { attr(r, "ctrl") <- ctrl; return(r) }
  }
  stop("no fit")
}
num <- function(x) if (is.null(x)) NA_real_ else as.numeric(x)
stats_of <- function(r) {
  col <- if (r$method == "REML") "REML" else "ML"
  fs <- r$fit.stats[[col]]
  list(beta = num(r$beta), se = num(r$se), zval = num(r$zval), pval = num(r$pval),
       ci_lb = num(r$ci.lb), ci_ub = num(r$ci.ub), vb = unname(as.matrix(r$vb)),
       sigma2 = num(r$sigma2), tau2 = num(r$tau2), rho = num(r$rho),
       QE = num(r$QE), QEp = num(r$QEp), QM = num(r$QM), QMp = num(r$QMp),
       QMdf = num(r$QMdf), ddf = num(r$ddf), k = r$k, p = r$p,
       s_nlevels = num(r$s.nlevels), g_nlevels = num(r$g.nlevels.f),
       logLik = fs[1], deviance = fs[2], AIC = fs[3], BIC = fs[4], AICc = fs[5],
       control = attr(r, "ctrl"))
}
fits <- list()
add <- function(name, dataset, args, X, r) {
  fits[[name]] <<- list(dataset = dataset, args = args, X = unname(X), values = stats_of(r))
}

# ---------------------------------------------------------------- konstantopoulos2011
kon <- dat.konstantopoulos2011
for (method in c("REML", "ML")) for (test in c("z", "t")) {
  r <- fit_mv(yi, vi, random = ~ 1 | district/school, data = kon, method = method, test = test)
  add(paste("kon", method, test, sep = "_"), "konstantopoulos2011",
      list(random = "~ 1 | district/school", method = method, test = test),
      model.matrix(~ 1, kon), r)
}
kon$year_c <- kon$year - mean(kon$year)
r <- fit_mv(yi, vi, mods = ~ year_c, random = ~ 1 | district/school, data = kon)
add("kon_year", "konstantopoulos2011", list(random = "~ 1 | district/school", method = "REML",
    test = "z", mods = "year_c"), model.matrix(~ year_c, kon), r)
r <- fit_mv(yi, vi, random = ~ 1 | district, data = kon)
add("kon_district", "konstantopoulos2011", list(random = "~ 1 | district", method = "REML",
    test = "z"), model.matrix(~ 1, kon), r)

# ---------------------------------------------------------------- berkey1998
ber <- dat.berkey1998
V <- bldiag(lapply(split(ber[, c("v1i", "v2i")], ber$trial), as.matrix))
for (struct in c("UN", "CS", "HCS", "DIAG")) for (method in c("REML", "ML")) {
  r <- fit_mv(yi, V, mods = ~ outcome - 1, random = ~ outcome | trial, struct = struct,
              data = ber, method = method)
  add(paste("ber", struct, method, sep = "_"), "berkey1998",
      list(random = "~ outcome | trial", struct = struct, method = method, test = "z"),
      model.matrix(~ outcome - 1, ber), r)
}
r <- rma.mv(yi, V, mods = ~ outcome - 1, data = ber)
add("ber_FE", "berkey1998", list(method = "REML", test = "z"),
    model.matrix(~ outcome - 1, ber), r)
fits$ber_FE$values$control <- list(rel.tol = 1e-12)   # no variance component: closed form
ber$year_c <- ber$year - 1983
r <- fit_mv(yi, V, mods = ~ outcome + outcome:year_c - 1, random = ~ outcome | trial,
            struct = "UN", data = ber, test = "t")
add("ber_UN_year_t", "berkey1998", list(random = "~ outcome | trial", struct = "UN",
    method = "REML", test = "t"), model.matrix(~ outcome + outcome:year_c - 1, ber), r)

# ---------------------------------------------------------------- assink2016
ass <- dat.assink2016
r <- fit_mv(yi, vi, random = ~ 1 | study/esid, data = ass)
add("ass", "assink2016", list(random = "~ 1 | study/esid", method = "REML", test = "z"),
    model.matrix(~ 1, ass), r)
# Multilevel I² (metafor FAQ; Nakagawa & Santos 2012): typical within-study variance
# (k - p) / tr(P) with P from the sampling variances only.
i2 <- function(r) {
  W <- diag(1 / r$vi); X <- model.matrix(r)
  P <- W - W %*% X %*% solve(t(X) %*% W %*% X) %*% t(X) %*% W
  typical <- (r$k - r$p) / sum(diag(P))
  list(I2 = 100 * sum(r$sigma2) / (sum(r$sigma2) + typical),
       I2_levels = 100 * r$sigma2 / (sum(r$sigma2) + typical), typical = typical)
}
fits$ass$I2 <- i2(r)
fits$kon_REML_z$I2 <- i2(rma.mv(yi, vi, random = ~ 1 | district/school, data = kon,
                                 control = list(rel.tol = 1e-12)))
r <- fit_mv(yi, vi, mods = ~ factor(deltype), random = ~ 1 | study/esid, data = ass)
add("ass_deltype", "assink2016", list(random = "~ 1 | study/esid", method = "REML",
    test = "z"), model.matrix(~ factor(deltype), ass), r)
fits$ass_deltype$I2 <- i2(r)
# vcalc: a constant correlation of 0.6 between the effects of one study.
Va <- vcalc(vi, cluster = study, obs = esid, rho = 0.6, data = ass)
r <- fit_mv(yi, Va, random = ~ 1 | study/esid, data = ass)
add("ass_vcalc", "assink2016", list(random = "~ 1 | study/esid", method = "REML",
    test = "z", vcalc_rho = 0.6), model.matrix(~ 1, ass), r)
fits$ass_vcalc$V <- unname(as.matrix(Va))

# ---------------------------------------------------------------- robust
robust_of <- function(r, cluster, cs) {
  rr <- robust(r, cluster = cluster, clubSandwich = cs)
  out <- list(beta = num(rr$beta), se = num(rr$se), zval = num(rr$zval), pval = num(rr$pval),
              ci_lb = num(rr$ci.lb), ci_ub = num(rr$ci.ub), vb = unname(as.matrix(rr$vb)),
              QM = num(rr$QM), QMdf = num(rr$QMdf), QMp = num(rr$QMp), dfs = num(rr$dfs),
              n = rr$n)
  out
}
robust_cases <- list()
add_robust <- function(name, fit, cluster_col, cs, values) {
  robust_cases[[length(robust_cases) + 1]] <<- list(name = name, fit = fit,
      cluster = cluster_col, clubSandwich = cs, values = values)
}
refit <- function(name) {
  f <- fits[[name]]
  f
}
r_kon <- rma.mv(yi, vi, random = ~ 1 | district/school, data = kon, control = list(rel.tol = 1e-12))
r_kon_y <- rma.mv(yi, vi, mods = ~ year_c, random = ~ 1 | district/school, data = kon,
                  control = list(rel.tol = 1e-12))
r_ass_d <- rma.mv(yi, vi, mods = ~ factor(deltype), random = ~ 1 | study/esid, data = ass,
                  control = list(rel.tol = 1e-12))
r_ber <- rma.mv(yi, V, mods = ~ outcome - 1, random = ~ outcome | trial, struct = "UN",
                data = ber, control = list(rel.tol = 1e-12))
for (cs in c(FALSE, TRUE)) {
  add_robust("kon_REML_z", "kon_REML_z", "district", cs, robust_of(r_kon, kon$district, cs))
  add_robust("kon_year", "kon_year", "district", cs, robust_of(r_kon_y, kon$district, cs))
  add_robust("ass_deltype", "ass_deltype", "study", cs, robust_of(r_ass_d, ass$study, cs))
  add_robust("ber_UN_REML", "ber_UN_REML", "trial", cs, robust_of(r_ber, ber$trial, cs))
}
# rma.uni: bcg with moderators, clustered by allocation x latitude band.
bcg <- escalc("RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg$band <- ifelse(bcg$ablat < 30, "low", ifelse(bcg$ablat < 40, "mid", "high"))
bcg$cl <- paste(bcg$alloc, bcg$band)
bcg$cl2 <- c(1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7)
uni <- list()
for (method in c("REML", "DL")) {
  r <- rma(yi, vi, mods = ~ ablat + year, data = bcg, method = method,
           control = list(threshold = 1e-12, maxiter = 1000))
  uni[[method]] <- list(args = list(method = method, mods = c("ablat", "year")),
    X = unname(model.matrix(r)), tau2 = r$tau2, beta = num(r$beta))
  for (cs in c(FALSE, TRUE)) {
    add_robust(paste0("bcg_", method), paste0("bcg_", method), "cl2", cs,
               robust_of(r, bcg$cl2, cs))
  }
}
r <- rma(yi, vi, data = bcg, control = list(threshold = 1e-12, maxiter = 1000))
uni$intercept <- list(args = list(method = "REML"), X = unname(model.matrix(r)), tau2 = r$tau2,
                      beta = num(r$beta))
for (cs in c(FALSE, TRUE)) add_robust("bcg_intercept", "bcg_intercept", "cl2", cs,
                                     robust_of(r, bcg$cl2, cs))

data <- list(
  konstantopoulos2011 = data.frame(district = kon$district, school = kon$school,
                                   study = kon$study, year = kon$year, year_c = kon$year_c,
                                   yi = c(kon$yi), vi = kon$vi),
  berkey1998 = data.frame(trial = ber$trial, author = ber$author, year = ber$year,
                          outcome = ber$outcome, yi = c(ber$yi), vi = ber$vi,
                          v1i = ber$v1i, v2i = ber$v2i),
  assink2016 = data.frame(study = ass$study, esid = ass$esid, yi = ass$yi, vi = ass$vi,
                          deltype = ass$deltype, year = ass$year),
  bcg = data.frame(trial = bcg$trial, yi = c(bcg$yi), vi = bcg$vi, ablat = bcg$ablat,
                   year = bcg$year, alloc = bcg$alloc, cl2 = bcg$cl2))
out <- list(provenance = list(R = R.version.string,
                              metafor = as.character(packageVersion("metafor")),
                              clubSandwich = as.character(packageVersion("clubSandwich"))),
            data = data, fits = fits, uni = uni, robust = robust_cases,
            berkey_V = unname(as.matrix(V)))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null",
                  matrix = "rowmajor", pretty = FALSE),
           "tests/data/metafor/rma_mv.json")

# Example data sets shipped with the package (fedsynth.example_data): the data of the
# rma.mv and robust() examples in the README and docs/metafor-features.md.
write.csv(data$konstantopoulos2011[, c("district", "school", "study", "year", "yi", "vi")],
          "fedsynth/data/konstantopoulos2011.csv", row.names = FALSE)
write.csv(data$berkey1998[, c("trial", "author", "year", "outcome", "yi", "vi", "v1i", "v2i")],
          "fedsynth/data/berkey1998.csv", row.names = FALSE)
write.csv(data$assink2016[, c("study", "esid", "yi", "vi", "deltype", "year")],
          "fedsynth/data/assink2016.csv", row.names = FALSE)
