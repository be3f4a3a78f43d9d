# Reference values of fedsynth's permutest (exact permutation tests) from metafor 3.8-1.
# Run once: Rscript tests/data/metafor/permutest.R  (writes permutest.json next to it)
suppressPackageStartupMessages({library(metafor); library(jsonlite)})
ctl <- list(threshold = 1e-12, maxiter = 1000)
num <- function(x) unname(as.vector(x))
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg$random <- as.numeric(bcg$alloc == "random")
d <- data.frame(author = bcg$author, ablat = bcg$ablat, alloc = bcg$alloc,
                random = bcg$random, year = bcg$year, yi = num(bcg$yi), vi = num(bcg$vi))
toy <- data.frame(yi = c(0.1, 0.3, 0.35, 0.65, 0.45, 0.15), vi = rep(0.02, 6), x = 1:6)
out <- list(data = list(bcg = d, toy = toy), cases = list())
perm <- function(name, data, rows, mods, method = "REML", test = "z", exact = FALSE) {
  dd <- data[rows, ]
  res <- if (is.null(mods)) rma(yi, vi, data = dd, method = method, test = test, control = ctl)
         else rma(yi, vi, mods = as.formula(mods), data = dd, method = method, test = test,
                  control = ctl)
  pt <- permutest(res, exact = exact, progbar = FALSE)
  out$cases[[name]] <<- list(data = if (identical(data, toy)) "toy" else "bcg", rows = rows,
                             mods = mods, method = method, test = test, exact = exact,
                             iter = length(pt$QM.perm), pval = num(pt$pval), QMp = pt$QMp,
                             zval = num(pt$zval), QM = pt$QM, beta = num(pt$beta))
}
perm("toy_x", toy, 1:6, "~ x")
perm("toy_int", toy, 1:6, NULL)
perm("bcg8_int", d, 1:8, NULL)
perm("bcg8_int_knha", d, 1:8, NULL, test = "knha")
perm("bcg8_random", d, 1:8, "~ random")
perm("bcg8_random_DL_t", d, 1:8, "~ random", method = "DL", test = "t")
perm("bcg7_ablat", d, 1:7, "~ ablat", exact = TRUE)
perm("bcg9_alloc_knha", d, 1:9, "~ factor(alloc)", test = "knha", exact = TRUE)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null"),
           "tests/data/metafor/permutest.json")
