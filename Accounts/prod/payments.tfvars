# Payments data at rest: one customer managed key and the buckets it encrypts.
project = "payments"

tags = {
  Owner              = "payments-team"
  CostCentre         = "CC-2040"
  DataClassification = "confidential"
}

kms_keys = {
  # The alias defaults to alias/<project>-<name>, here alias/payments-data.
  data = {
    description          = "Encrypts the payments ledger and exports."
    rotation             = true
    deletion_window_days = 30
    policy_file          = "Accounts/prod/kms/payments-data.json"
  }
}

s3_buckets = {
  ledger = {
    versioning    = true
    kms_key_alias = "alias/payments-data"
  }

  exports = {
    versioning    = true
    kms_key_alias = "alias/payments-data"
    readers       = ["analytics", "ml-platform"]
  }
}
