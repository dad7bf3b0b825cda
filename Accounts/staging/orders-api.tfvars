# Staging orders API, deployed in us-east-1 next to the partner test systems.
project = "orders"
region  = "us-east-1"

tags = {
  Owner      = "orders-team"
  CostCentre = "CC-2050"
}

iam_roles = {
  orders-api = {
    description      = "Execution role of the staging orders API function."
    trusted_services = ["lambda.amazonaws.com"]
    managed_policies = ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
    policy_files     = ["Accounts/staging/iam/orders-api.json"]
  }
}

lambda_functions = {
  api = {
    description = "Returns order summaries from the staging payments ledger."
    runtime     = "python3.12"
    handler     = "handler.handler"
    source_dir  = "functions/orders-api"
    role_name   = "orders-api"
    memory_size = 128
    timeout     = 10
    environment = {
      LOG_LEVEL     = "debug"
      LEDGER_BUCKET = "payments-ledger-222222222222-eu-west-1"
    }
  }
}
