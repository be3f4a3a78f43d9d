# Reference values for internal-external cross-validation (issue 14;
# tests/reference/test_iecv_reference.py).
#
# Data: tests/data/models/trauma_registry.csv (eight MTFs of the synthetic trauma registry,
# high heterogeneity: baseline risk and the hypotension slope vary by site; the smallest
# site has no CT class IV/V). Model: the spec's tbi_mortality (logistic; factors with the
# declared levels, the first the reference).
#
# For each site in turn (held out):
#   global        glm() on the other seven sites; lp = predict(type = "link") at the
#                 held-out site
#   hierarchical  glmer(... + (1 | site), nAGQ = 25) on the other seven; lp at the mean
#                 intercept: predict(re.form = NA)
#   *_recalibrated: the held-out site's intercept shift glm(y ~ offset(lp), binomial)
#                 added to lp
# measures at the held-out site: pROC AUC (roc(y, p, direction = "<")) with DeLong
# variance, logit AUC (delta method), calibration slope glm(y ~ lp), calibration-in-the-
# large glm(y ~ offset(lp)), O, E, log(O/E) with variance (1 - O/n)/O (Debray et al.
# 2017, BMJ 356:i6460, Table 2). Each measure pooled over the eight held-out sites with
# rma(method = "REML"), test "z" and "knha"; the prediction interval
# estimate -/+ qt(0.975, k - 2) sqrt(tau2 + se^2) with each test's se.
#
# glm() is run to epsilon 1e-14 and refitted once from its estimate so that vcov() uses
# the weights at the estimate (docs/decisions/models.md, "two precision fixes").
#
# Run once from the repository root: Rscript tests/data/iecv/make_reference.R
# (R 4.2.2, metafor 3.8-1, lme4, pROC; Debian packages); writes reference.json here.
suppressMessages({library(metafor); library(lme4); library(pROC); library(jsonlite)})
here <- "tests/data/iecv"
data <- read.csv("tests/data/models/trauma_registry.csv", stringsAsFactors = FALSE,
                 na.strings = "")
data$motor_score <- factor(data$motor_score, levels = c("5/6", "4", "3", "1/2"))
data$pupil <- factor(data$pupil, levels = c("Both", "One", "None"))
data$ct <- factor(data$ct, levels = c("I/II", "III", "IV/V"))
sites <- unique(data$site)
fixed <- mort ~ age + motor_score + pupil + ct + hypox + hypots + tsah + edh

tight <- glm.control(epsilon = 1e-14, maxit = 100)
glm_tight <- function(formula, data, offset = NULL) {
  environment(formula) <- environment()
  fit <- glm(formula, family = binomial, data = data, offset = offset, control = tight)
  glm(formula, family = binomial, data = data, offset = offset, control = tight,
      start = coef(fit))
}

measures <- function(y, lp) {
  p <- plogis(lp)
  r <- roc(y, p, direction = "<", levels = c(0, 1), quiet = TRUE)
  auc <- as.numeric(auc(r)); auc_var <- var(r, method = "delong")
  d <- data.frame(y = y, lp = lp)
  slope_fit <- glm_tight(y ~ lp, d)
  citl_fit <- glm_tight(y ~ 1, d, offset = lp)
  O <- sum(y); E <- sum(p); n <- length(y)
  list(n = n, auc = auc, auc_var = auc_var, logit_auc = qlogis(auc),
       logit_auc_var = auc_var / (auc * (1 - auc))^2,
       calibration_slope = unname(coef(slope_fit)[2]),
       calibration_slope_var = vcov(slope_fit)[2, 2],
       calibration_in_the_large = unname(coef(citl_fit)[1]),
       calibration_in_the_large_var = vcov(citl_fit)[1, 1],
       O = O, E = E, log_OE = log(O / E), log_OE_var = (1 - O / n) / O)
}

candidates <- c("global", "global_recalibrated", "hierarchical", "hierarchical_recalibrated")
per_site <- setNames(lapply(candidates, function(x) list()), candidates)
developed <- list()
for (s in sites) {
  dev <- data[data$site != s, ]
  val <- data[data$site == s, ]
  g <- glm_tight(fixed, dev)
  h <- glmer(update(fixed, . ~ . + (1 | site)), family = binomial, data = dev, nAGQ = 25,
             control = glmerControl(optimizer = "bobyqa",
                                    optCtrl = list(maxfun = 1e5, rhobeg = 0.2,
                                                   rhoend = 1e-10)))
  developed[[s]] <- list(global = as.list(coef(g)), hierarchical = as.list(fixef(h)),
                         hierarchical_tau = unname(sqrt(VarCorr(h)$site[1])))
  lps <- list(global = predict(g, newdata = val, type = "link"),
              hierarchical = predict(h, newdata = val, re.form = NA, type = "link"))
  for (base in names(lps)) {
    lp <- unname(lps[[base]])
    per_site[[base]][[s]] <- measures(val$mort, lp)
    shift <- per_site[[base]][[s]]$calibration_in_the_large
    m <- measures(val$mort, lp + shift)
    m$recalibration <- shift
    per_site[[paste0(base, "_recalibrated")]][[s]] <- m
  }
}

pool_one <- function(yi, vi, test) {
  fit <- rma(yi, vi, method = "REML", test = test,
             control = list(threshold = 1e-12, maxiter = 1000))
  k <- fit$k
  half <- qt(0.975, k - 2) * sqrt(fit$tau2 + fit$se^2)
  est <- as.numeric(fit$beta)
  list(k = k, estimate = est, se = fit$se, ci_lb = fit$ci.lb, ci_ub = fit$ci.ub,
       tau2 = fit$tau2, I2 = fit$I2, Q = fit$QE, Q_pval = fit$QEp,
       pi_lb = est - half, pi_ub = est + half)
}
pooled <- list()
for (cand in candidates) {
  pooled[[cand]] <- list()
  for (measure in c("logit_auc", "calibration_slope", "calibration_in_the_large",
                    "log_OE")) {
    yi <- sapply(per_site[[cand]], function(m) m[[measure]])
    vi <- sapply(per_site[[cand]], function(m) m[[paste0(measure, "_var")]])
    pooled[[cand]][[measure]] <- list(z = pool_one(yi, vi, "z"),
                                      knha = pool_one(yi, vi, "knha"))
  }
}

out <- list(sites = sites, per_site = per_site, pooled = pooled, developed = developed,
            provenance = paste("R", getRversion(), "metafor", packageVersion("metafor"),
                               "lme4", packageVersion("lme4"), "pROC",
                               packageVersion("pROC"), "jsonlite",
                               packageVersion("jsonlite")))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE),
           file.path(here, "reference.json"))
