# Roles used by the CI pipelines that plan and apply this repository.
project = "ci-roles"

tags = {
  Owner      = "platform-team"
  CostCentre = "CC-1001"
}

iam_roles = {
  ci-runner = {
    description      = "CodeBuild jobs that run the orchestrator and assume the deploy role of each workload account."
    trusted_services = ["codebuild.amazonaws.com"]
    policy_files = [
      "Accounts/shared-services/iam/ci-runner-assume-deployers.json",
      "Accounts/shared-services/iam/ci-runner-logs.json",
    ]
  }

  terraform-plan-reader = {
    description             = "Read-only access for plan jobs, assumable only by the ci-runner role."
    assume_role_policy_file = "Accounts/shared-services/iam/plan-reader-trust.json"
    managed_policies        = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
  }
}
