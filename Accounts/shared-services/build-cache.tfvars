# Dependency and build caches for the CodeBuild runners in us-east-1.
# Cached files can be rebuilt, so the bucket keeps no old versions and may be emptied on destroy.
project = "build-cache"
region  = "us-east-1"

tags = {
  Owner      = "platform-team"
  CostCentre = "CC-1001"
}

s3_buckets = {
  ci = {
    versioning     = false
    lifecycle_days = 14
    force_destroy  = true
  }
}
