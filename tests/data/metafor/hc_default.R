# Henmi-Copas intervals with metafor's DEFAULT control (uniroot tol = eps^0.25, integrate's
# default rel.tol = eps^0.25), as a user calling hc(rma(yi, vi)) sees them. The root is then
# ~1e-5 from the exact one (bias_tools.json has the exact one, tol = 1e-12); fedsynth's hc
# reproduces R's root search step by step (Brent's zeroin, QUADPACK dqagi), so these values
# are matched to 1e-8.
#
# Data: the four data sets of bias_tools.json (read from it) plus dat.lee2004 (log odds
# ratios) and dat.bangertdrowns2004 (standardised mean differences), exported here.
#
# Run: Rscript tests/data/metafor/hc_default.R   (R 4.2.2, metafor 3.8-1, jsonlite).
# Writes tests/data/metafor/hc_default.json.

suppressPackageStartupMessages({library(metafor); library(jsonlite)})
here <- "tests/data/metafor"
ref <- fromJSON(file.path(here, "bias_tools.json"))
lee <- escalc("OR", ai = ai, n1i = n1i, ci = ci, n2i = n2i, data = dat.lee2004)
bd <- dat.bangertdrowns2004[!is.na(dat.bangertdrowns2004$yi), ]
data <- list(bcg = ref$data$bcg[c("yi", "vi")], hackshaw1998 = ref$data$hackshaw1998,
             molloy2014 = ref$data$molloy2014[c("yi", "vi")],
             fine1993 = ref$data$fine1993[c("yi", "vi")],
             lee2004 = data.frame(yi = c(lee$yi), vi = lee$vi),
             bangertdrowns2004 = data.frame(yi = bd$yi, vi = bd$vi))
cases <- list()
for (ds in names(data)) {
  d <- data[[ds]]
  for (level in c(95, 90)) {
    r <- hc(rma(d$yi, d$vi, level = level))
    cases[[length(cases) + 1]] <- list(
      dataset = ds, level = level,
      values = list(beta = r$beta, se = r$se, ci_lb = r$ci.lb, ci_ub = r$ci.ub,
                    tau2 = r$tau2))
  }
}
out <- list(provenance = paste("tests/data/metafor/hc_default.R;", R.version.string,
                               "; metafor", as.character(packageVersion("metafor"))),
            data = lapply(data, as.list), cases = cases)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(here, "hc_default.json"))
