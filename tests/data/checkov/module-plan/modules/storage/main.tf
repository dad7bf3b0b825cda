variable "names" {
  type = list(string)
}

resource "aws_s3_bucket" "this" {
  for_each = toset(var.names)

  bucket = "storage-${each.key}-example"
}

module "archive" {
  source = "../bucket"

  name = "archive"
}
