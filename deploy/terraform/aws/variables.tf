variable "region" {
  description = "AWS region of the shared pool and of new dedicated instances."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Prefix of every resource's name."
  type        = string
  default     = "tenantry"
}

variable "vpc_id" {
  description = "VPC the databases and Tenantry's processes live in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (two or more availability zones) for the databases."
  type        = list(string)
}

variable "instance_class" {
  description = "Instance class of the shared pool."
  type        = string
  default     = "db.r6g.large"
}

variable "allocated_storage" {
  description = "GiB of storage of the shared pool."
  type        = number
  default     = 100
}
