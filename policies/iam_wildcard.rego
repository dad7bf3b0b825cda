# In prod, no IAM policy statement allows every action on every resource.
#
# The policy documents are JSON strings in the plan, so each one is parsed with
# json.unmarshal. In a statement, Action and Resource may each be one string or a list.
package aws.iam.wildcard

import rego.v1

import data.lib.terraform

# Resource types whose `policy` argument is an identity-based policy document.
policy_resource_types := ["aws_iam_policy", "aws_iam_role_policy", "aws_iam_user_policy", "aws_iam_group_policy"]

deny contains finding if {
	input.orchestrator.environment == "prod"
	some document in policy_documents
	some index, statement in statements(json.unmarshal(document.json))
	allows_everything(statement)

	finding := {
		"msg": sprintf(
			"%s allows Action \"*\" on Resource \"*\" in %s: prod forbids full administrator access, so list the actions and resources that are needed",
			[document.address, statement_label(statement, index)],
		),
		"resource": document.address,
	}
}

# A policy that is unknown at plan time (built from values that only the apply
# creates) cannot be checked now, so it is reported as a warning, not a failure.
warn contains finding if {
	input.orchestrator.environment == "prod"
	some resource_type in policy_resource_types
	some change in terraform.resource_changes(resource_type)
	terraform.is_created_or_updated(change)
	terraform.is_unknown(change, "policy")

	finding := {
		"msg": sprintf("%s has a policy that is unknown until apply, so it was not checked for Action \"*\" on Resource \"*\"", [change.address]),
		"resource": change.address,
	}
}

# Known policy documents of the instances that the plan creates or changes, with their address.
policy_documents contains {"address": change.address, "json": document} if {
	some resource_type in policy_resource_types
	some change in terraform.resource_changes(resource_type)
	terraform.is_created_or_updated(change)
	document := terraform.known_value(change, "policy")
	is_string(document)
}

# The deprecated `inline_policy` blocks of aws_iam_role.
policy_documents contains {"address": change.address, "json": block.policy} if {
	some change in terraform.resource_changes("aws_iam_role")
	terraform.is_created_or_updated(change)
	not terraform.is_unknown(change, "inline_policy")
	some block in object.get(change.change.after, "inline_policy", [])
	is_string(block.policy)
}

statements(policy) := policy.Statement if is_array(policy.Statement)

statements(policy) := [policy.Statement] if is_object(policy.Statement)

allows_everything(statement) if {
	statement.Effect == "Allow"
	"*" in as_list(statement.Action)
	"*" in as_list(statement.Resource)
}

as_list(value) := value if is_array(value)

as_list(value) := [value] if is_string(value)

# The statement's Sid when it has one, else its position in the Statement list, counted from 0.
statement_label(statement, index) := sprintf("the statement with Sid %s", [statement.Sid]) if {
	is_string(statement.Sid)
	statement.Sid != ""
} else := sprintf("Statement[%d]", [index])
