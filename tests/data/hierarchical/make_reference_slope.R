# Reference values for the random-slope model of fedsynth.models.hierarchical (stretch goal).
#
# Run once, from the repository root, with R 4.2.2 and Debian's r-cran-lme4 (1.1-31),
# r-cran-cubature (2.0.4.6), r-cran-statmod, r-cran-mvtnorm, r-cran-jsonlite (1.8.4):
#
#   Rscript tests/data/hierarchical/make_reference_slope.R tests/data/hierarchical
#
# Model: eta_ij = x_ij' beta + u_0i + u_1i w_ij, (u_0i, u_1i) ~ N(0, L L'),
# L = [[l11, 0], [l21, l22]] (lme4's theta). For each data set it writes the rows as CSV,
# re-reads them and computes
#   * "exact": each site's two-dimensional integral over (u_0, u_1) by a 50 x 50
#     Gauss-Hermite product rule (statmod's nodes) centred at the site's mode in the
#     u-plane and rotated and scaled by the Cholesky factor R of the inverse curvature
#     there, the integrand's value and its score in (beta, log l11, l21, log l22) (the data
#     term's derivative in beta and the bivariate normal prior's derivatives in the
#     Cholesky factor, on the scale of u itself, not fedsynth's z) in one pass; the maximum
#     by nlminb from glmer's Laplace estimates, polished by Newton steps with the Hessian
#     as central differences of that score until the score is below 1e-8; SEs from that
#     Hessian. The rule's accuracy is checked at the maximum, per site, against adaptive
#     cubature (cubature::hcubature, Genz-Malik, relative 1e-10, on [-20, 20]^2 in the
#     standardised coordinates) and a 70 x 70 rule: both stored. Per site: the conditional
#     mode of (u_0, u_1) (Newton), its conditional covariance (the inverse curvature), the
#     posterior mean and covariance, and the site's log-likelihood term and score at a
#     probe point off the maximum.
#   * "glmer": glmer(y ~ ... + (1 + w | site)), Laplace (nAGQ > 1 is not available for a
#     vector random effect), with the exact log-likelihood at its estimates.
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
  library(cubature)
  library(mvtnorm)
  library(statmod)
})
GH <- statmod::gauss.quad.prob(50, "normal")

args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "tests/data/hierarchical"

log1pexp <- function(x) ifelse(x > 0, x + log1p(exp(-x)), log1p(exp(x)))

row_terms <- function(family, y, eta) {
  if (family == "binomial") {
    p <- plogis(eta)
    list(l = y * eta - log1pexp(eta), d1 = y - p, d2 = -p * (1 - p))
  } else {
    mu <- exp(eta)
    list(l = y * eta - mu - lgamma(y + 1), d1 = y - mu, d2 = -mu)
  }
}

# One site at (beta, L): log L_i, score in (beta, log l11, l21, log l22), random effects.
site_eval2 <- function(d, family, beta, L, moments = TRUE) {
  eta <- drop(d$X %*% beta)
  w <- d$w
  Sigma <- L %*% t(L)
  Sinv <- solve(Sigma)
  h <- function(u) sum(row_terms(family, d$y, eta + u[1] + u[2] * w)$l) +
    dmvnorm(u, c(0, 0), Sigma, log = TRUE)
  grad_h <- function(u) {
    tt <- row_terms(family, d$y, eta + u[1] + u[2] * w)
    c(sum(tt$d1), sum(tt$d1 * w)) - drop(Sinv %*% u)
  }
  hess_h <- function(u) {
    tt <- row_terms(family, d$y, eta + u[1] + u[2] * w)
    matrix(c(sum(tt$d2), sum(tt$d2 * w), sum(tt$d2 * w), sum(tt$d2 * w^2)), 2) - Sinv
  }
  u <- c(0, 0)
  for (it in 1:500) {
    step <- -solve(hess_h(u), grad_h(u))
    while (h(u + step) < h(u) - 1e-13 * (1 + abs(h(u)))) step <- step / 2
    u <- u + step
    if (max(abs(step)) < 1e-14 * (1 + max(abs(u)))) break
  }
  uhat <- u
  C <- solve(-hess_h(uhat))
  R <- t(chol(C))
  h0 <- h(uhat)
  l11 <- L[1, 1]; l21 <- L[2, 1]; l22 <- L[2, 2]
  p <- ncol(d$X)
  # the integrand at points us (2 x m) of the u-plane: rows = density relative to the mode,
  # then its products with the score and (for the moments) with u
  f <- function(us) {
    E <- eta + outer(rep(1, length(eta)), us[1, ]) + outer(w, us[2, ])
    rt <- row_terms(family, d$y, E)
    dens <- exp(colSums(rt$l) + dmvnorm(t(us), c(0, 0), Sigma, log = TRUE) - h0)
    z1 <- us[1, ] / l11
    z2 <- (us[2, ] - l21 * z1) / l22
    score <- rbind(crossprod(d$X, rt$d1), z1^2 - z1 * z2 * l21 / l22 - 1, z1 * z2 / l22,
                   z2^2 - 1)
    rbind(dens, sweep(score, 2, dens, `*`),
          if (moments) rbind(us[1, ] * dens, us[2, ] * dens, us[1, ]^2 * dens,
                             us[2, ]^2 * dens, us[1, ] * us[2, ] * dens))
  }
  # 50 x 50 Gauss-Hermite product rule (statmod's nodes for N(0, 1)) on u = u_hat + R v
  V <- rbind(rep(GH$nodes, length(GH$nodes)), rep(GH$nodes, each = length(GH$nodes)))
  W <- rep(GH$weights, length(GH$nodes)) * rep(GH$weights, each = length(GH$nodes)) *
    exp(colSums(V^2) / 2) * 2 * pi * det(R)
  I <- drop(f(uhat + R %*% V) %*% W)
  mass <- I[1]
  out <- list(loglik = h0 + log(mass), score = I[2:(p + 4)] / mass, mode = uhat,
              mode_cov = C)
  if (moments) {
    m <- I[(p + 5):(p + 9)] / mass
    out$posterior_mean <- m[1:2]
    out$posterior_cov <- matrix(c(m[3] - m[1]^2, m[5] - m[1] * m[2], m[5] - m[1] * m[2],
                                  m[4] - m[2]^2), 2)
    # the rule's own accuracy: log L_i by hcubature (Genz-Malik, relative 1e-10) on
    # v in [-20, 20]^2, and by a 70 x 70 rule
    box <- hcubature(function(v) matrix(f(uhat + R %*% v)[1, ] * det(R), 1), c(-20, -20),
                     c(20, 20), tol = 1e-10, vectorInterface = TRUE, maxEval = 2e7)
    out$loglik_cubature <- h0 + log(box$integral)
    G70 <- statmod::gauss.quad.prob(70, "normal")
    V70 <- rbind(rep(G70$nodes, 70), rep(G70$nodes, each = 70))
    W70 <- rep(G70$weights, 70) * rep(G70$weights, each = 70) * exp(colSums(V70^2) / 2) *
      2 * pi * det(R)
    out$loglik_70 <- h0 + log(sum(f(uhat + R %*% V70)[1, ] * W70))
  }
  out
}

theta_L <- function(th, p) matrix(c(exp(th[p + 1]), th[p + 2], 0, exp(th[p + 3])), 2)

exact_slope <- function(sites, family, start) {
  p <- ncol(sites[[1]]$X)
  total <- function(th, moments = FALSE) lapply(sites, site_eval2, family = family,
                                                beta = th[1:p], L = theta_L(th, p),
                                                moments = moments)
  f <- function(th) -sum(sapply(total(th), `[[`, "loglik"))
  g <- function(th) -Reduce(`+`, lapply(total(th), `[[`, "score"))
  opt <- nlminb(start, f, g, control = list(eval.max = 500, iter.max = 200))
  th <- opt$par
  hess <- function(th) {
    q <- length(th)
    H <- sapply(seq_len(q), function(k) {
      e <- replace(numeric(q), k, 1e-4)
      (g(th + e) - g(th - e)) / 2e-4
    })
    -(H + t(H)) / 2
  }
  H <- hess(th)
  for (k in 1:6) {
    gr <- -g(th)
    if (max(abs(gr)) < 1e-8) break
    th <- th - solve(H, gr)
  }
  H <- hess(th)
  parts <- total(th, moments = TRUE)
  list(theta = th, loglik = sum(sapply(parts, `[[`, "loglik")), gradient = -g(th),
       cov = solve(-H), parts = parts, nlminb = opt$message, f = f)
}

named <- function(values, names) setNames(as.list(unname(values)), names)

describe <- function(name, frame, file, family, site, y, covariates, slope, formula) {
  clock <- proc.time()
  write.csv(frame, file.path(out, file), row.names = FALSE)
  frame <- read.csv(file.path(out, file))
  frame[[site]] <- as.character(frame[[site]])
  names_ <- c("intercept", covariates)
  p <- length(names_)
  sites <- lapply(split(seq_len(nrow(frame)), factor(frame[[site]],
                                                     levels = unique(frame[[site]]))),
                  function(rows) {
                    X <- cbind(1, as.matrix(frame[rows, covariates, drop = FALSE]))
                    list(X = X, y = frame[[y]][rows], w = frame[[slope]][rows])
                  })
  fit <- glmer(formula, data = frame, family = family,
               control = glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
  th_g <- unname(getME(fit, "theta"))
  start <- c(fixef(fit), log(th_g[1]), th_g[2], log(th_g[3]))
  ex <- exact_slope(sites, family, start)
  th <- ex$theta
  se <- sqrt(diag(ex$cov))
  l11 <- exp(th[p + 1]); l21 <- th[p + 2]; l22 <- exp(th[p + 3])
  tau1 <- sqrt(l21^2 + l22^2)
  # delta method for tau_0, tau_1, rho from (log l11, l21, log l22)
  J <- rbind(c(l11, 0, 0), c(0, l21 / tau1, l22^2 / tau1),
             c(0, l22^2 / tau1^3, -l21 * l22^2 / tau1^3))
  V <- ex$cov[(p + 1):(p + 3), (p + 1):(p + 3)]
  se_derived <- sqrt(diag(J %*% V %*% t(J)))
  sites_out <- lapply(ex$parts, function(part)
    list(loglik = part$loglik, mode = part$mode, mode_cov = part$mode_cov,
         posterior_mean = part$posterior_mean, posterior_cov = part$posterior_cov,
         loglik_cubature = part$loglik_cubature, loglik_70 = part$loglik_70))
  exact <- list(coefficients = named(th[1:p], names_), se = named(se[1:p], names_),
                theta = c(l11, l21, l22), log_l11 = th[p + 1], log_l22 = th[p + 3],
                tau_intercept = l11, tau_slope = tau1, rho = l21 / tau1,
                se_tau_intercept = se_derived[1], se_tau_slope = se_derived[2],
                se_rho = se_derived[3], logLik = ex$loglik,
                max_abs_gradient = max(abs(ex$gradient)), covariance = unname(ex$cov),
                sites = sites_out, optimiser = ex$nlminb)
  probe <- th + c(0.1 * seq_len(p) * (-1)^seq_len(p), -0.2, 0.1, 0.2)
  parts <- lapply(sites, site_eval2, family = family, beta = probe[1:p],
                  L = theta_L(probe, p), moments = FALSE)
  case <- list(name = name, file = file, family = family, site = site, y = y,
               covariates = I(covariates), names = I(names_), slope = slope,
               formula = paste(deparse(formula), collapse = " "), k = length(sites),
               n = nrow(frame), exact = exact,
               glmer = list(coefficients = named(fixef(fit), names_), theta = th_g,
                            logLik_laplace = as.numeric(logLik(fit)),
                            exact_logLik_at_glmer = -ex$f(start)),
               probe = list(beta = probe[1:p], theta = c(exp(probe[p + 1]), probe[p + 2],
                                                         exp(probe[p + 3])),
                            sites = lapply(parts, function(x) list(loglik = x$loglik,
                                                                    score = x$score))))
  cat(sprintf("%-24s %6.1fs k=%2d n=%4d logLik exact %.10f (at glmer's %.10f) theta %s\n",
              name, (proc.time() - clock)[["elapsed"]], length(sites), nrow(frame),
              ex$loglik, case$glmer$exact_logLik_at_glmer,
              paste(signif(c(l11, l21, l22), 6), collapse = " ")))
  case
}

cases <- list()

# ---- synthetic trauma-like registry: baseline risk and the age slope vary by site
set.seed(20240601)
sizes <- c(240, 200, 160, 130, 110, 90, 70, 55, 40, 30)
Sigma <- matrix(c(0.6^2, 0.3 * 0.6 * 0.35, 0.3 * 0.6 * 0.35, 0.35^2), 2)
U <- rmvnorm(length(sizes), c(0, 0), Sigma)
rows <- lapply(seq_along(sizes), function(i) {
  n <- sizes[i]
  age10 <- round(rnorm(n, 0, 1.2), 2)
  hypotension <- rbinom(n, 1, 0.25)
  eta <- -1.4 + U[i, 1] + (0.5 + U[i, 2]) * age10 + 1.0 * hypotension
  data.frame(site = sprintf("mtf-%02d", i), age10 = age10, hypotension = hypotension,
             mort = rbinom(n, 1, plogis(eta)))
})
cases[[length(cases) + 1]] <- describe(
  "slope_binomial", do.call(rbind, rows), "slope_binomial.csv", "binomial", "site", "mort",
  c("age10", "hypotension"), "age10",
  formula = mort ~ age10 + hypotension + (1 + age10 | site))

# ---- synthetic counts: the dose effect varies by site
set.seed(20240602)
sizes <- c(120, 100, 80, 70, 60, 50, 40, 30)
Sigma <- matrix(c(0.5^2, -0.4 * 0.5 * 0.25, -0.4 * 0.5 * 0.25, 0.25^2), 2)
U <- rmvnorm(length(sizes), c(0, 0), Sigma)
rows <- lapply(seq_along(sizes), function(i) {
  n <- sizes[i]
  dose <- round(runif(n, -1.5, 1.5), 2)
  female <- rbinom(n, 1, 0.5)
  eta <- 0.3 + U[i, 1] + (0.4 + U[i, 2]) * dose - 0.2 * female
  data.frame(site = sprintf("site-%02d", i), dose = dose, female = female,
             events = rpois(n, exp(eta)))
})
cases[[length(cases) + 1]] <- describe(
  "slope_poisson", do.call(rbind, rows), "slope_poisson.csv", "poisson", "site", "events",
  c("dose", "female"), "dose", formula = events ~ dose + female + (1 + dose | site))

writeLines(toJSON(list(
  generated_by = "tests/data/hierarchical/make_reference_slope.R",
  R = R.version.string, lme4 = as.character(packageVersion("lme4")),
  cubature = as.character(packageVersion("cubature")),
  mvtnorm = as.character(packageVersion("mvtnorm")),
  jsonlite = as.character(packageVersion("jsonlite")),
  cases = cases), auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = TRUE),
  file.path(out, "random_slope_reference.json"))
