# The R side of benchmarks/example.py: what `fedsynth meta --example` computes, in R.
# Reads the bundled seed example (fedsynth/data/seed_example.csv: study, yi, sei), fits
# metafor's REML random-effects model with the z test and prints it with its Q-profile
# confidence intervals for tau^2, tau, I^2 and H^2. R 4.2.2, metafor 3.8-1.
# Usage: Rscript benchmarks/example_metafor.R fedsynth/data/seed_example.csv
suppressPackageStartupMessages(library(metafor))
dat <- read.csv(commandArgs(TRUE)[1])
res <- rma(yi = yi, sei = sei, data = dat, method = "REML", test = "z")
print(res)
print(confint(res))
