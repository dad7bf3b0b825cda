# Every taggable resource that the plan creates or changes carries the tags
# Owner and CostCentre with a non-empty value.
#
# A resource is taggable when its planned values have `tags` or `tags_all`.
# `tags_all` adds the provider's default_tags to `tags`, so it is the value
# checked while it is known. A tag whose value Terraform learns only during the
# apply is not reported.
package tagging.required

import rego.v1

import data.lib.terraform

required_tags := ["Owner", "CostCentre"]

deny contains finding if {
	some change in input.resource_changes
	change.mode == "managed"
	terraform.is_created_or_updated(change)
	is_taggable(change)
	some tag in required_tags
	not may_have_tag(change, tag)

	finding := {
		"msg": sprintf(
			"%s is missing the required tag %s: add it to the resource's tags or to the provider's default_tags",
			[change.address, tag],
		),
		"resource": change.address,
	}
}

is_taggable(change) if "tags_all" in object.keys(change.change.after)

is_taggable(change) if "tags" in object.keys(change.change.after)

# The tag is present, or it cannot be ruled out before the apply.
may_have_tag(change, tag) if has_tag_in(change, "tags_all", tag)

may_have_tag(change, tag) if has_tag_in(change, "tags", tag)

# A map that is unknown as a whole may contain any tag.
has_tag_in(change, attribute, tag) if terraform.is_unknown(change, attribute)

# A map can be known while some of its values are not: `after_unknown` then
# marks those keys, for example {"tags_all": {"Owner": true}}.
has_tag_in(change, attribute, tag) if object.get(change.change, ["after_unknown", attribute, tag], false) == true

has_tag_in(change, attribute, tag) if {
	value := object.get(change.change.after, [attribute, tag], "")
	is_string(value)
	trim_space(value) != ""
}
