# Reference values for the escalc measures added in issue 16 (SMDH, SMCC, SMCR, MN, MC,
# CVR, VR, COR, UCOR, PHI, OR2D, PFT, PLN, IRD, IRSD, AS), the vtype variants of every
# measure fedsynth offers, and add / to / drop00 on the new count measures.
#
# Data (all exported into the JSON, so the tests never need R):
#   bcg           metafor's dat.bcg (2x2 tables: AS, PHI, OR2D)
#   nielweise2007 dat.nielweise2007 (2x2 tables with zero cells and a double zero)
#   normand1999   dat.normand1999 (two-group means: SMDH, CVR, VR, MD/SMD/ROM vtypes;
#                 group 1 alone for MN)
#   curtis1998    the first 20 rows of dat.curtis1998 (small groups, n = 3 to 8)
#   morris2008    the five pre-post studies of Morris (2008, Organ. Res. Methods 11:364),
#                 as in metafor's help page of escalc (MC, SMCC, SMCR)
#   molloy2014    dat.molloy2014 (correlations: COR, UCOR) plus three made-up rows with
#                 ni = 5, 4 and 3 (where UCOR and the variances are undefined)
#   pritz1997     dat.pritz1997 (proportions, one of 10/10: PFT, PLN, PR/PLO vtypes)
#   hart1999      dat.hart1999 (incidence rates: IRD, IRSD)
#   rates         a synthetic rate table with a zero count and a double zero
#
# metafor's NA is written as null. UCOR needs the gsl package (r-cran-gsl).
#
# Run: Rscript tests/data/metafor/escalc_measures.R   (R 4.2.2, metafor 3.8-1, jsonlite,
# gsl).  Writes tests/data/metafor/escalc_measures.json.

suppressPackageStartupMessages({library(metafor); library(jsonlite)})

morris2008 <- data.frame(ni = c(20, 50, 9, 10, 14),
                         m1i = c(30.6, 23.5, 0.5, 53.4, 35.6),   # post-test means
                         m2i = c(38.5, 26.8, 0.7, 75.9, 36.0),   # pre-test means
                         sd1i = c(15.0, 3.1, 0.1, 14.5, 4.7),
                         sd2i = c(11.6, 4.1, 0.1, 4.4, 4.6),
                         ri = c(0.47, 0.64, 0.77, 0.89, 0.44))
molloy <- rbind(dat.molloy2014[, c("ri", "ni")], data.frame(ri = c(0.3, -0.2, 0.5),
                                                            ni = c(5, 4, 3)))
rates <- data.frame(x1i = c(0, 3, 0, 5, 12), t1i = c(100, 120, 80, 90, 400),
                    x2i = c(2, 4, 0, 7, 9), t2i = c(110, 100, 95, 85, 380))
data <- list(
  bcg = dat.bcg[, c("tpos", "tneg", "cpos", "cneg")],
  nielweise2007 = dat.nielweise2007[, c("ai", "n1i", "ci", "n2i")],
  normand1999 = dat.normand1999[, c("m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i")],
  curtis1998 = dat.curtis1998[1:20, c("m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i")],
  morris2008 = morris2008,
  molloy2014 = molloy,
  pritz1997 = dat.pritz1997[, c("xi", "ni")],
  hart1999 = dat.hart1999[, c("x1i", "t1i", "x2i", "t2i")],
  rates = rates)
names(data$bcg) <- c("ai", "bi", "ci", "di")

cases <- list()
# args: escalc argument -> column of the data set; opts: add / to / drop00 / vtype
add_case <- function(dataset, measure, args, opts = list(), suffix = "") {
  d <- data[[dataset]]
  call <- c(list(measure = measure), lapply(args, function(col) d[[col]]), opts)
  res <- suppressWarnings(do.call(escalc, call))
  tag <- if (length(opts)) paste0("/", paste(names(opts), sapply(opts, as.character),
                                            sep = "=", collapse = "/")) else ""
  cases[[length(cases) + 1]] <<- c(
    list(id = paste0(dataset, "/", measure, tag, suffix), dataset = dataset, measure = measure,
         args = args, yi = as.numeric(res$yi), vi = as.numeric(res$vi)), opts)
}
tab <- list(ai = "ai", bi = "bi", ci = "ci", di = "di")
tabn <- list(ai = "ai", n1i = "n1i", ci = "ci", n2i = "n2i")
means <- list(m1i = "m1i", sd1i = "sd1i", n1i = "n1i", m2i = "m2i", sd2i = "sd2i",
              n2i = "n2i")
paired <- list(m1i = "m1i", m2i = "m2i", sd1i = "sd1i", sd2i = "sd2i", ni = "ni", ri = "ri")
rate <- list(x1i = "x1i", t1i = "t1i", x2i = "x2i", t2i = "t2i")
prop <- list(xi = "xi", ni = "ni")

# --- the new measures with metafor's defaults ------------------------------------------
for (m in c("AS", "PHI", "OR2D")) {
  add_case("bcg", m, tab)
  add_case("nielweise2007", m, tabn)
}
add_case("bcg", "PHI", tab, list(vtype = "ST"))
add_case("nielweise2007", "PHI", tabn, list(vtype = "ST"))
for (ds in c("normand1999", "curtis1998")) for (m in c("SMDH", "CVR", "VR")) add_case(ds, m, means)
for (ds in c("normand1999", "curtis1998")) {
  add_case(ds, "SMDH", means, list(vtype = "LS2"))
  add_case(ds, "VR", list(sd1i = "sd1i", n1i = "n1i", sd2i = "sd2i", n2i = "n2i"),
           suffix = "/sd-only")
  add_case(ds, "MN", list(mi = "m1i", sdi = "sd1i", ni = "n1i"))
}
for (m in c("MC", "SMCC")) add_case("morris2008", m, paired)
add_case("morris2008", "SMCR", paired[c("m1i", "m2i", "sd1i", "ni", "ri")])
add_case("morris2008", "SMCC", paired, list(vtype = "LS2"))
add_case("morris2008", "SMCR", paired[c("m1i", "m2i", "sd1i", "ni", "ri")],
         list(vtype = "LS2"))
for (m in c("COR", "UCOR", "ZCOR")) add_case("molloy2014", m, list(ri = "ri", ni = "ni"))
add_case("molloy2014", "COR", list(ri = "ri", ni = "ni"), list(vtype = "AV"))
add_case("molloy2014", "UCOR", list(ri = "ri", ni = "ni"), list(vtype = "UB"))
add_case("molloy2014", "UCOR", list(ri = "ri", ni = "ni"), list(vtype = "AV"))
for (m in c("PFT", "PLN")) add_case("pritz1997", m, prop)
add_case("pritz1997", "PLN", prop, list(vtype = "AV"))
for (m in c("IRD", "IRSD")) {
  add_case("hart1999", m, rate)
  add_case("rates", m, rate)
}

# --- vtype variants of the measures fedsynth had before --------------------------------
for (ds in c("normand1999", "curtis1998")) {
  for (vt in c("UB", "LS2", "AV")) add_case(ds, "SMD", means, list(vtype = vt))
  add_case(ds, "MD", means, list(vtype = "HO"))
  for (vt in c("HO", "AV", "AVHO")) add_case(ds, "ROM", means, list(vtype = vt))
}
for (vt in c("UB", "AV")) {
  add_case("bcg", "RD", tab, list(vtype = vt))
  add_case("pritz1997", "PR", prop, list(vtype = vt))
}
add_case("pritz1997", "PLO", prop, list(vtype = "AV"))

# --- add / to / drop00 on the new count measures ----------------------------------------
for (to in c("only0", "all", "if0all", "none")) for (add in c(0.5, 1)) {
  for (drop00 in c(FALSE, TRUE)) {
    for (m in c("AS", "PHI", "OR2D"))
      add_case("nielweise2007", m, tabn, list(add = add, to = to, drop00 = drop00))
    for (m in c("IRD", "IRSD"))
      add_case("rates", m, rate, list(add = add, to = to, drop00 = drop00))
  }
  for (m in c("PFT", "PLN")) add_case("pritz1997", m, prop, list(add = add, to = to))
}
add_case("rates", "IRD", rate, list(drop00 = TRUE))
add_case("rates", "IRSD", rate, list(drop00 = TRUE))
add_case("nielweise2007", "PHI", tabn, list(drop00 = TRUE))

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
  provenance = paste0("tests/data/metafor/escalc_measures.R; ", R.version.string,
                      "; metafor ", as.character(packageVersion("metafor")),
                      "; gsl ", as.character(packageVersion("gsl"))),
  data = lapply(data, as.list),
  cases = cases)
writeLines(toJSON(exact(doc), auto_unbox = TRUE, json_verbatim = TRUE, null = "null",
                  pretty = TRUE, digits = NA), "tests/data/metafor/escalc_measures.json")
cat("wrote tests/data/metafor/escalc_measures.json:", length(cases), "cases\n")
