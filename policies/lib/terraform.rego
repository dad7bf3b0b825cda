# Helpers for reading a Terraform plan (the JSON of `terraform show -json PLANFILE`).
#
# The policies of this folder import this package as `data.lib.terraform`. It
# defines no deny, violation or warn rule itself.
package lib.terraform

import rego.v1

# Managed resource instances of one type that the plan lists, whatever their action.
# The plan lists unchanged instances too, with the action "no-op".
resource_changes(resource_type) := [change |
	some change in input.resource_changes
	change.mode == "managed"
	change.type == resource_type
]

# The instance is created or updated in place, or replaced (which creates it anew).
is_created_or_updated(change) if "create" in change.change.actions

is_created_or_updated(change) if "update" in change.change.actions

# The instance is destroyed, alone or as part of a replacement.
is_deleted(change) if "delete" in change.change.actions

# The instance exists after the apply: it is not destroyed without a replacement.
exists_after_apply(change) if change.change.after != null

# An attribute whose planned value Terraform learns only during the apply.
# `after_unknown` marks such an attribute with true; an attribute that is
# partly unknown (a map with one unknown key) is an object there instead.
is_unknown(change, attribute) if object.get(change.change, ["after_unknown", attribute], false) == true

# The planned value of a top-level attribute, defined only when Terraform knows it at plan time.
known_value(change, attribute) := value if {
	not is_unknown(change, attribute)
	value := object.get(change.change.after, attribute, null)
}

# The module call path without instance keys: `module.app["a"].module.db[0]`
# becomes `module.app.module.db`, and the root module is "".
module_path(change) := regex.replace(object.get(change, "module_address", ""), `\[[^\]]*\]`, "")

# The instance address inside its module, as the configuration writes references:
# `module.app["a"].aws_s3_bucket.logs["x"]` becomes `aws_s3_bucket.logs["x"]`.
module_relative_address(change) := trim_prefix(change.address, concat("", [change.module_address, "."])) if {
	change.module_address
}

module_relative_address(change) := change.address if not change.module_address

# The resource's address in the configuration: type and name, without module or instance key.
configuration_address(change) := concat(".", [change.type, change.name])

# The configuration of the module that contains the instance.
# A child module's configuration sits under
# `module_calls.<name>.module` of its parent's configuration.
module_configuration(change) := input.configuration.root_module if module_path(change) == ""

module_configuration(change) := object.get(input.configuration.root_module, path, null) if {
	module_path(change) != ""
	# `module.app.module.db` splits into "module", "app", "module", "db": the call names are at odd positions.
	# NOTE: regopy 1.5.2 rejects `some i, name in ...` inside a comprehension, hence `some i` with an index.
	parts := split(module_path(change), ".")
	path := [segment | some i; parts[i]; i % 2 == 1; some segment in ["module_calls", parts[i], "module"]]
}

# The references of one argument of the instance's resource block, for example
# ["aws_s3_bucket.logs.id", "aws_s3_bucket.logs"]. An argument that is a constant
# or absent has none.
argument_references(change, argument) := references if {
	some resource in module_configuration(change).resources
	resource.address == configuration_address(change)
	references := object.get(resource, ["expressions", argument, "references"], [])
}

# A reference names the target: the target itself, one of its attributes or one of its instances.
refers_to(reference, target) if reference == target

refers_to(reference, target) if startswith(reference, concat("", [target, "."]))

refers_to(reference, target) if startswith(reference, concat("", [target, "["]))

# The `bucket` argument of a bucket's companion resource (encryption, public
# access block) names the bucket. Three ways to tell, since the bucket's id is
# unknown until a new bucket exists:
#   - the planned bucket names are known and equal;
#   - the argument refers to exactly this bucket instance, as `aws_s3_bucket.logs.id`
#     or `aws_s3_bucket.logs["x"].id` do;
#   - the argument refers to the bucket resource, and both instances have the same
#     instance key, as `aws_s3_bucket.this[each.key].id` does when both resources
#     use the same for_each (Terraform lists that reference as "aws_s3_bucket.this").
# NOTE: a new bucket that reaches the companion through a module output, or through a
# for_each with other keys, matches none of these, so its policy reports it as missing.
# NOTE: the S3 policies compare every bucket with every companion, so the work grows with
# the square of the bucket count. In one measurement on 2 cores, 75 buckets in one shard
# passed in 10 s and 90 made regopy fail, which fails the shard's policy stage (never passes it).
configures_bucket(companion, bucket) if {
	name := known_value(companion, "bucket")
	name != null
	name == known_value(bucket, "bucket")
}

configures_bucket(companion, bucket) if {
	object.get(companion, "module_address", "") == object.get(bucket, "module_address", "")
	some reference in argument_references(companion, "bucket")
	refers_to(reference, module_relative_address(bucket))
}

configures_bucket(companion, bucket) if {
	object.get(companion, "module_address", "") == object.get(bucket, "module_address", "")
	bucket.index != null
	object.get(companion, "index", null) == bucket.index
	some reference in argument_references(companion, "bucket")
	reference == configuration_address(bucket)
}
