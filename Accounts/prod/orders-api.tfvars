# Orders API: a Lambda function that reads order records from the payments ledger bucket.
project = "orders"

tags = {
  Owner      = "orders-team"
  CostCentre = "CC-2050"
}

iam_roles = {
  orders-api = {
    description      = "Execution role of the orders API function."
    trusted_services = ["lambda.amazonaws.com"]
    managed_policies = ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
    policy_files     = ["Accounts/prod/iam/orders-api.json"]
  }
}

lambda_functions = {
  api = {
    description = "Returns order summaries from the payments ledger."
    runtime     = "python3.12"
    handler     = "handler.handler"
    source_dir  = "functions/orders-api"
    role_name   = "orders-api"
    memory_size = 256
    timeout     = 10
    environment = {
      LOG_LEVEL     = "info"
      LEDGER_BUCKET = "payments-ledger-333333333333-eu-west-1"
    }
  }
}
