# Reference values for escalc's continuity-correction options (add, to, drop00) as the
# Python API fedsynth.escalc exposes them, on tables with zero cells, double-zero studies
# and proportions of 0 and 1.
#
# Data: metafor's dat.nielweise2007 (18 trials of anti-infective catheters; zero cells and
# one double-zero trial, Yucel 2004), dat.pritz1997 (proportions, one of them 10/10), and a
# small synthetic incidence-rate table with a zero count and a double zero (listed below).
# For every measure x add x to x drop00 the script records metafor's yi and vi (NA, which
# metafor gives for a dropped or undefined study, as null).
#
# Run: Rscript tests/data/escalc/escalc_options.R   (R 4.2.2, metafor 3.8-1, jsonlite)
# Writes tests/data/escalc/escalc_options.json.

suppressPackageStartupMessages({library(metafor); library(jsonlite)})

rates <- data.frame(x1i = c(0, 3, 0, 5, 12), t1i = c(100, 120, 80, 90, 400),
                    x2i = c(2, 4, 0, 7, 9), t2i = c(110, 100, 95, 85, 380))
nw <- dat.nielweise2007[, c("ai", "n1i", "ci", "n2i")]
pr <- dat.pritz1997[, c("xi", "ni")]

cases <- list()
add_case <- function(id, measure, data, args, add, to, drop00) {
  res <- suppressWarnings(do.call(escalc, c(list(measure = measure, data = data, add = add,
                                                 to = to, drop00 = drop00), args)))
  cases[[length(cases) + 1]] <<- list(
    id = sprintf("%s/%s/add=%g/to=%s/drop00=%s", id, measure, add, to, drop00),
    dataset = id, measure = measure, add = add, to = to, drop00 = drop00,
    yi = as.numeric(res$yi), vi = as.numeric(res$vi))
}
for (to in c("only0", "all", "if0all", "none")) for (add in c(0.5, 1)) {
  for (drop00 in c(FALSE, TRUE)) {
    for (m in c("OR", "RR", "RD"))
      add_case("nielweise2007", m, nw, list(ai = quote(ai), n1i = quote(n1i),
                                           ci = quote(ci), n2i = quote(n2i)),
               add, to, drop00)
    add_case("rates", "IRR", rates, list(x1i = quote(x1i), t1i = quote(t1i),
                                         x2i = quote(x2i), t2i = quote(t2i)),
             add, to, drop00)
  }
  for (m in c("PLO", "PR"))
    add_case("pritz1997", m, pr, list(xi = quote(xi), ni = quote(ni)), add, to, FALSE)
}

# 17 significant digits so Python reads back the same doubles (jsonlite writes 15)
exact <- function(x) {
  if (is.list(x)) return(lapply(x, exact))
  if (is.double(x) && !is.null(x)) {
    txt <- ifelse(is.na(x), "null", sprintf("%.17g", x))
    return(structure(if (length(x) == 1) txt else paste0("[", paste(txt, collapse = ", "),
                                                         "]"), class = "json"))
  }
  x
}
doc <- list(
  provenance = paste0("tests/data/escalc/escalc_options.R; ", R.version.string,
                      "; metafor ", as.character(packageVersion("metafor"))),
  data = list(nielweise2007 = as.list(nw), pritz1997 = as.list(pr), rates = as.list(rates)),
  cases = cases)
writeLines(toJSON(exact(doc), auto_unbox = TRUE, json_verbatim = TRUE, null = "null",
                  pretty = TRUE), "tests/data/escalc/escalc_options.json")
cat("wrote tests/data/escalc/escalc_options.json:", length(cases), "cases\n")
