# Staging copy of the payments ledger. The key has the short deletion window of a test account.
project = "payments"

tags = {
  Owner      = "payments-team"
  CostCentre = "CC-2040"
}

kms_keys = {
  data = {
    description          = "Encrypts the staging payments ledger."
    rotation             = true
    deletion_window_days = 7
    alias                = "alias/payments-data"
  }
}

s3_buckets = {
  ledger = {
    versioning    = true
    kms_key_alias = "alias/payments-data"
  }
}
