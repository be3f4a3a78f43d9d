# Reference values for fedsynth's own Cox Newton step (fedsynth/effects/aggregates.py):
# survival::coxph with Efron and Breslow ties, converged far past R's default (eps 1e-14),
# on the six public sites and on survival's lung data with times coarsened to 30-day
# intervals (heavy ties). Written once by:  Rscript tests/data/warehouse/cox_reference.R
# (from the repository root). Output: tests/data/warehouse/cox_reference.json and
# tests/data/warehouse/lung_ties.csv.
suppressPackageStartupMessages({library(survival); library(jsonlite)})
out_dir <- "tests/data/warehouse"
ctl <- coxph.control(eps = 1e-14, iter.max = 200, toler.chol = 1e-15)

fit_one <- function(data, formula, ties) {
  f <- coxph(formula, data = data, ties = ties, control = ctl)
  list(coef = unname(coef(f)), vcov = unname(f$var), loglik = unname(f$loglik[2]),
       iter = unname(f$iter), n = f$n, nevent = f$nevent)
}

cases <- list()
sites <- sort(list.files("tests/data/sites_public", pattern = "^mtf-.*\\.csv$", full.names = TRUE))
for (path in sites) {
  d <- read.csv(path)
  site <- sub("\\.csv$", "", basename(path))
  for (ties in c("efron", "breslow")) {
    cases[[length(cases) + 1]] <- c(list(data = paste0("sites_public/", basename(path)),
      time = "time", event = "event", exposure = "treated", covariates = c("age", "sex"),
      ties = ties), fit_one(d, Surv(time, event) ~ treated + age + sex, ties))
  }
}

lung2 <- survival::lung
lung2 <- lung2[complete.cases(lung2[, c("time", "status", "sex", "age", "ph.ecog")]), ]
lung_ties <- data.frame(time = lung2$time %/% 30, event = as.integer(lung2$status == 2),
                        female = as.integer(lung2$sex == 2), age = lung2$age,
                        ecog = lung2$ph.ecog)
write.csv(lung_ties, file.path(out_dir, "lung_ties.csv"), row.names = FALSE)
for (ties in c("efron", "breslow")) {
  cases[[length(cases) + 1]] <- c(list(data = "warehouse/lung_ties.csv", time = "time",
    event = "event", exposure = "female", covariates = c("age", "ecog"), ties = ties),
    fit_one(lung_ties, Surv(time, event) ~ female + age + ecog, ties))
  cases[[length(cases) + 1]] <- c(list(data = "warehouse/lung_ties.csv", time = "time",
    event = "event", exposure = "female", covariates = character(0), ties = ties),
    fit_one(lung_ties, Surv(time, event) ~ female, ties))
}

info <- list(R = R.version.string, survival = as.character(packageVersion("survival")),
             jsonlite = as.character(packageVersion("jsonlite")),
             control = "coxph.control(eps = 1e-14, iter.max = 200, toler.chol = 1e-15)")
writeLines(toJSON(list(provenance = info, cases = cases), digits = NA, auto_unbox = TRUE,
                  pretty = TRUE), file.path(out_dir, "cox_reference.json"))
