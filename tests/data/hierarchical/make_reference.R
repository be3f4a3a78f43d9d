# Reference values for fedsynth.models.hierarchical (the exact random-intercept GLM).
#
# Run once, from the repository root, with R 4.2.2 and Debian's r-cran-lme4 (1.1-31),
# r-cran-numderiv (2016.8-1.1), r-cran-mvtnorm, r-cran-jsonlite (1.8.4):
#
#   Rscript tests/data/hierarchical/make_reference.R tests/data/hierarchical
#
# For each data set it writes the rows as CSV (the design columns ready to use), re-reads
# them, and computes
#   * "exact": the maximum of the marginal likelihood evaluated with R's integrate() per
#     site (adaptive Gauss-Kronrod, rel.tol 1e-12, on the scale of the random intercept u
#     itself, not the standardised z = u / tau used by fedsynth), with the score also by
#     integrate() (Louis's identity in (beta, log tau)), maximised by nlminb and polished by
#     Newton steps with the Hessian as central differences of that score; SEs from it.
#     Per site: the conditional mode of u (Newton on the log posterior), its conditional SD
#     1 / sqrt(-h''(u_hat)), the posterior mean and SD by integrate(), and the site's
#     log-likelihood term and score at a "probe" point away from the maximum.
#     Gaussian: the same with the closed-form density mvtnorm::dmvnorm(y, X b, s^2 I + t^2 J)
#     instead of integrate(), numDeriv (Richardson) gradients and Hessian.
#   * "glmer": lme4::glmer(..., nAGQ = 25) (lmer(..., REML = FALSE) for gaussian): the
#     cross-check, not the reference.
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
  library(numDeriv)
  library(mvtnorm)
})

args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "tests/data/hierarchical"
dir.create(out, showWarnings = FALSE, recursive = TRUE)

log1pexp <- function(x) ifelse(x > 0, x + log1p(exp(-x)), log1p(exp(x)))

# log f(y | eta) per row (full density) and its first two derivatives in eta
row_terms <- function(family, y, m, eta) {
  if (family == "binomial") {
    p <- plogis(eta)
    list(l = y * eta - m * log1pexp(eta) + lchoose(m, y), d1 = y - m * p,
         d2 = -m * p * (1 - p))
  } else {
    mu <- exp(eta)
    list(l = y * eta - mu - lgamma(y + 1), d1 = y - mu, d2 = -mu)
  }
}

# Everything one site needs at (beta, tau): log L_i, score in (beta, log tau), random
# intercept summaries. h(u) = sum_j log f(y_j | eta_j + u) + log dnorm(u; 0, tau).
site_eval <- function(d, family, beta, tau, moments = TRUE, score = TRUE) {
  eta <- drop(d$X %*% beta) + d$off
  h <- function(u) sum(row_terms(family, d$y, d$m, eta + u)$l) + dnorm(u, 0, tau, log = TRUE)
  h1 <- function(u) sum(row_terms(family, d$y, d$m, eta + u)$d1) - u / tau^2
  h2 <- function(u) sum(row_terms(family, d$y, d$m, eta + u)$d2) - 1 / tau^2
  u <- 0
  for (it in 1:500) {
    step <- -h1(u) / h2(u)
    while (h(u + step) < h(u) - 1e-13 * (1 + abs(h(u)))) step <- step / 2
    u <- u + step
    if (abs(step) < 1e-14 * (1 + abs(u))) break
  }
  uhat <- u
  s <- 1 / sqrt(-h2(uhat))
  h0 <- h(uhat)
  # integrand matrix: rows = quantities, columns = u values
  integrand <- function(us, what) {
    E <- outer(eta, us, "+")
    tt <- row_terms(family, d$y, d$m, E)
    w <- exp(colSums(tt$l) + dnorm(us, 0, tau, log = TRUE) - h0)
    switch(what,
           mass = w,
           score = rbind(crossprod(d$X, tt$d1), us^2 / tau^2 - 1) %*% diag(w, length(w)),
           u1 = us * w,
           u2 = us^2 * w)
  }
  cuts <- uhat + c(-Inf, -10 * s, 0, 10 * s, Inf)
  integ <- function(fun, abs_tol) {
    total <- 0
    for (k in 1:4) {
      total <- total + integrate(fun, cuts[k], cuts[k + 1], rel.tol = 1e-12,
                                 abs.tol = abs_tol, subdivisions = 2000L,
                                 stop.on.error = FALSE)$value
    }
    total
  }
  mass <- integ(function(us) integrand(us, "mass"), 0)
  out <- list(loglik = h0 + log(mass), mode = uhat, mode_sd = s)
  if (score) {
    q <- ncol(d$X) + 1
    out$score <- sapply(seq_len(q), function(k)
      integ(function(us) integrand(us, "score")[k, ], 1e-14 * mass)) / mass
  }
  if (moments) {
    m1 <- integ(function(us) integrand(us, "u1"), 1e-14 * mass) / mass
    m2 <- integ(function(us) integrand(us, "u2"), 1e-14 * mass) / mass
    out$posterior_mean <- m1
    out$posterior_sd <- sqrt(m2 - m1^2)
  }
  out
}

split_sites <- function(frame, site, y, covariates, trials = NULL, offset = NULL) {
  lapply(split(seq_len(nrow(frame)), factor(frame[[site]], levels = unique(frame[[site]]))),
         function(rows) {
           X <- cbind(1, as.matrix(frame[rows, covariates, drop = FALSE]))
           list(X = X, y = frame[[y]][rows],
                m = if (is.null(trials)) rep(1, length(rows)) else frame[[trials]][rows],
                off = if (is.null(offset)) rep(0, length(rows)) else log(frame[[offset]][rows]))
         })
}

exact_glmm <- function(sites, family, start) {
  p <- ncol(sites[[1]]$X)
  total <- function(theta, moments = FALSE, score = TRUE) {
    lapply(sites, site_eval, family = family, beta = theta[1:p], tau = exp(theta[p + 1]),
           moments = moments, score = score)
  }
  f <- function(theta) -sum(sapply(total(theta, score = FALSE), `[[`, "loglik"))
  g <- function(theta) -Reduce(`+`, lapply(total(theta), `[[`, "score"))
  # nlminb from glmer's estimates to its default tolerance (the integrate() objective is
  # exact to ~1e-12, below what nlminb's convergence tests can use), then Newton steps
  # with the Hessian as a central difference of the integrate() score (step 1e-4: error
  # O(1e-8)), repeated until the score is below 1e-8.
  opt <- nlminb(start, f, g, control = list(eval.max = 500, iter.max = 200))
  theta <- opt$par
  hess <- function(theta) {
    q <- length(theta)
    H <- sapply(seq_len(q), function(k) {
      e <- replace(numeric(q), k, 1e-4)
      (g(theta + e) - g(theta - e)) / 2e-4
    })
    -(H + t(H)) / 2
  }
  H <- hess(theta)
  for (k in 1:5) {
    gr <- -g(theta)
    if (max(abs(gr)) < 1e-9) break
    theta <- theta - solve(H, gr)
  }
  H <- hess(theta)
  parts <- total(theta, moments = TRUE)
  list(theta = theta, loglik = sum(sapply(parts, `[[`, "loglik")), gradient = -g(theta),
       cov = solve(-H), parts = parts, nlminb = opt$message)
}

exact_lmm <- function(sites, start) {
  p <- ncol(sites[[1]]$X)
  site_ll <- function(d, theta) {
    tau <- exp(theta[p + 1]); sigma <- exp(theta[p + 2]); n <- length(d$y)
    V <- sigma^2 * diag(n) + tau^2 * matrix(1, n, n)
    dmvnorm(d$y, drop(d$X %*% theta[1:p]) + d$off, V, log = TRUE)
  }
  f <- function(theta) -sum(sapply(sites, site_ll, theta = theta))
  opt <- nlminb(start, f, control = list(eval.max = 2000, iter.max = 1000))
  theta <- opt$par
  for (k in 1:3) theta <- theta - solve(hessian(f, theta), grad(f, theta))
  H <- -hessian(f, theta)
  parts <- lapply(sites, function(d) {
    tau <- exp(theta[p + 1]); sigma <- exp(theta[p + 2]); n <- length(d$y)
    r <- d$y - drop(d$X %*% theta[1:p]) - d$off
    D <- sigma^2 + n * tau^2
    list(loglik = site_ll(d, theta), mode = tau^2 * sum(r) / D,
         mode_sd = tau * sigma / sqrt(D), posterior_mean = tau^2 * sum(r) / D,
         posterior_sd = tau * sigma / sqrt(D))
  })
  list(theta = theta, loglik = -f(theta), gradient = -grad(f, theta), cov = solve(-H),
       parts = parts, nlminb = opt$message)
}

named <- function(values, names) setNames(as.list(unname(values)), names)

describe <- function(name, frame, file, family, site, y, covariates, trials = NULL,
                     offset = NULL, formula) {
  clock <- proc.time()
  write.csv(frame, file.path(out, file), row.names = FALSE)
  frame <- read.csv(file.path(out, file))  # fit exactly what the CSV holds
  frame[[site]] <- as.character(frame[[site]])
  names_ <- c("intercept", covariates)
  p <- length(names_)
  sites <- split_sites(frame, site, y, covariates, trials, offset)
  if (family == "gaussian") {
    fit <- lmer(formula, data = frame, REML = FALSE)
    sig <- sigma(fit)
  } else {
    fit <- glmer(formula, data = frame, family = family, nAGQ = 25,
                 control = glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
  }
  tau_g <- unname(getME(fit, "theta")) * (if (family == "gaussian") sig else 1)
  re <- ranef(fit, condVar = TRUE)[[1]]
  re_sd <- sqrt(drop(attr(re, "postVar")))
  glmer_out <- list(
    coefficients = named(fixef(fit), names_), se = named(sqrt(diag(as.matrix(vcov(fit)))), names_),
    tau = tau_g, logLik = as.numeric(logLik(fit)),
    site_intercepts = named(re[, 1], rownames(re)), site_intercepts_se = named(re_sd, rownames(re)))
  if (family == "gaussian") {
    glmer_out$sigma <- sig
  } else {
    # With nAGQ > 1 glmer's logLik is computed from deviance residuals: it lacks the
    # saturated model's log-likelihood (0 for a 0/1 outcome), which is added back here
    # to compare it with the full log-likelihood (R's glm convention, and fedsynth's).
    yy <- frame[[y]]
    mm <- if (is.null(trials)) rep(1, nrow(frame)) else frame[[trials]]
    glmer_out$saturated_loglik <- if (family == "binomial")
      sum(dbinom(yy, mm, yy / mm, log = TRUE)) else sum(dpois(yy, yy, log = TRUE))
  }
  start <- c(fixef(fit), log(tau_g), if (family == "gaussian") log(sig))
  ex <- if (family == "gaussian") exact_lmm(sites, start) else exact_glmm(sites, family, start)
  th <- ex$theta
  se <- sqrt(diag(ex$cov))
  sites_out <- lapply(ex$parts, function(part)
    list(loglik = part$loglik, mode = part$mode, mode_sd = part$mode_sd,
         posterior_mean = part$posterior_mean, posterior_sd = part$posterior_sd))
  exact <- list(coefficients = named(th[1:p], names_), se = named(se[1:p], names_),
                log_tau = th[p + 1], tau = exp(th[p + 1]), tau2 = exp(2 * th[p + 1]),
                se_log_tau = se[p + 1], se_tau = exp(th[p + 1]) * se[p + 1],
                logLik = ex$loglik, max_abs_gradient = max(abs(ex$gradient)),
                covariance = unname(ex$cov), sites = sites_out, optimiser = ex$nlminb)
  if (family == "gaussian") {
    exact$sigma <- exp(th[p + 2])
    exact$se_log_sigma <- se[p + 2]
  }
  case <- list(name = name, file = file, family = family, site = site, y = y,
               covariates = I(covariates), names = I(names_), trials = trials, offset = offset,
               formula = paste(deparse(formula), collapse = " "),
               k = length(sites), n = nrow(frame), exact = exact, glmer = glmer_out)
  if (family != "gaussian") {
    # the site function alone: each site's term and score at a point off the maximum
    probe <- c(th[1:p] + 0.1 * seq_len(p) * (-1)^seq_len(p), th[p + 1] - 0.3)
    parts <- lapply(sites, site_eval, family = family, beta = probe[1:p],
                    tau = exp(probe[p + 1]), moments = FALSE)
    case$probe <- list(beta = probe[1:p], log_tau = probe[p + 1],
                       sites = lapply(parts, function(x) list(loglik = x$loglik,
                                                               score = x$score)))
  }
  cat(sprintf("%-22s %6.1fs k=%3d n=%5d logLik exact %.10f glmer %.10f tau %.6f / %.6f\n",
              name, (proc.time() - clock)[["elapsed"]], length(sites), nrow(frame), ex$loglik, glmer_out$logLik,
              exp(th[p + 1]), tau_g))
  case
}

cases <- list()

# ---- synthetic multisite binary outcome: 10 sites of different sizes, baseline risk varies,
# one small site without any event (its conditional mode must stay finite)
set.seed(20240514)
sizes <- c(320, 260, 210, 160, 120, 90, 70, 50, 35, 14)
u <- rnorm(length(sizes), 0, 0.7)
rows <- lapply(seq_along(sizes), function(i) {
  n <- sizes[i]
  age10 <- round(rnorm(n, 0, 1.2), 2)
  hypotension <- rbinom(n, 1, 0.25)
  eta <- -1.6 + u[i] + 0.45 * age10 + 1.1 * hypotension
  mort <- rbinom(n, 1, plogis(eta))
  if (i == length(sizes)) mort[] <- 0L
  data.frame(site = sprintf("mtf-%02d", i), age10 = age10, hypotension = hypotension,
             mort = mort)
})
binom <- do.call(rbind, rows)
cases[[length(cases) + 1]] <- describe(
  "synthetic_binomial", binom, "synthetic_binomial.csv", "binomial", "site", "mort",
  c("age10", "hypotension"), formula = mort ~ age10 + hypotension + (1 | site))

# ---- synthetic counts with exposure time (offset log(time)), 10 sites
set.seed(20240515)
sizes <- c(150, 120, 100, 80, 65, 50, 40, 30, 25, 20)
u <- rnorm(length(sizes), 0, 0.5)
rows <- lapply(seq_along(sizes), function(i) {
  n <- sizes[i]
  time <- round(runif(n, 0.5, 5), 2)
  x <- round(rnorm(n), 2)
  treated <- rbinom(n, 1, 0.5)
  count <- rpois(n, time * exp(-0.7 + u[i] + 0.3 * x - 0.4 * treated))
  data.frame(site = sprintf("site-%02d", i), time = time, x = x, treated = treated,
             count = count)
})
pois <- do.call(rbind, rows)
cases[[length(cases) + 1]] <- describe(
  "synthetic_poisson", pois, "synthetic_poisson.csv", "poisson", "site", "count",
  c("x", "treated"), offset = "time",
  formula = count ~ x + treated + offset(log(time)) + (1 | site))

# ---- synthetic continuous outcome, 9 sites
set.seed(20240516)
sizes <- c(80, 60, 45, 40, 30, 25, 20, 12, 6)
u <- rnorm(length(sizes), 0, 1.5)
rows <- lapply(seq_along(sizes), function(i) {
  n <- sizes[i]
  x <- round(rnorm(n, 0, 2), 2)
  y <- round(10 + u[i] + 0.8 * x + rnorm(n, 0, 3), 3)
  data.frame(site = sprintf("site-%d", i), x = x, y = y)
})
gaus <- do.call(rbind, rows)
cases[[length(cases) + 1]] <- describe(
  "synthetic_gaussian", gaus, "synthetic_gaussian.csv", "gaussian", "site", "y", "x",
  formula = y ~ x + (1 | site))

# ---- lme4's cbpp: contagious bovine pleuropneumonia, 15 herds, binomial with trials
data(cbpp, package = "lme4")
cb <- data.frame(herd = as.character(cbpp$herd), incidence = cbpp$incidence,
                 size = cbpp$size, period2 = as.integer(cbpp$period == "2"),
                 period3 = as.integer(cbpp$period == "3"),
                 period4 = as.integer(cbpp$period == "4"))
cases[[length(cases) + 1]] <- describe(
  "cbpp", cb, "cbpp.csv", "binomial", "herd", "incidence",
  c("period2", "period3", "period4"), trials = "size",
  formula = cbind(incidence, size - incidence) ~ period2 + period3 + period4 + (1 | herd))

# ---- lme4's grouseticks: ticks on red grouse chicks, 63 locations, poisson
data(grouseticks, package = "lme4")
gt <- data.frame(location = as.character(grouseticks$LOCATION), ticks = grouseticks$TICKS,
                 year96 = as.integer(grouseticks$YEAR == "96"),
                 year97 = as.integer(grouseticks$YEAR == "97"),
                 cheight = grouseticks$cHEIGHT)
cases[[length(cases) + 1]] <- describe(
  "grouseticks", gt, "grouseticks.csv", "poisson", "location", "ticks",
  c("year96", "year97", "cheight"),
  formula = ticks ~ year96 + year97 + cheight + (1 | location))

# ---- lme4's sleepstudy: reaction times of 18 subjects, gaussian (ML)
data(sleepstudy, package = "lme4")
ss <- data.frame(subject = as.character(sleepstudy$Subject), reaction = sleepstudy$Reaction,
                 days = sleepstudy$Days)
cases[[length(cases) + 1]] <- describe(
  "sleepstudy", ss, "sleepstudy.csv", "gaussian", "subject", "reaction", "days",
  formula = reaction ~ days + (1 | subject))

writeLines(toJSON(list(
  generated_by = "tests/data/hierarchical/make_reference.R",
  R = R.version.string, lme4 = as.character(packageVersion("lme4")),
  numDeriv = as.character(packageVersion("numDeriv")),
  mvtnorm = as.character(packageVersion("mvtnorm")),
  jsonlite = as.character(packageVersion("jsonlite")),
  cases = cases), auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = TRUE),
  file.path(out, "hierarchical_reference.json"))
