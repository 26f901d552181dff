# The AWS side of a Tenantry installation: a shared-pool RDS PostgreSQL 15
# (logical replication on, for online moves), the network and key it needs,
# its secrets in Secrets Manager, and a least-privilege IAM policy for the
# control plane's provisioner (it creates, snapshots and deletes dedicated
# instances tagged managed-by = tenantry, and nothing else).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account = data.aws_caller_identity.current.account_id
  arn     = "arn:${data.aws_partition.current.partition}"
}

# --- Encryption: one customer-managed key for storage, snapshots, metrics and secrets.

resource "aws_kms_key" "tenantry" {
  description             = "${var.name}: RDS storage, snapshots, Performance Insights and secrets"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "${local.arn}:iam::${local.account}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "RdsAndSecretsUseIt"
        Effect    = "Allow"
        Principal = { AWS = "${local.arn}:iam::${local.account}:root" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"]
        Resource  = "*"
        Condition = {
          StringEquals = { "kms:ViaService" = ["rds.${var.region}.amazonaws.com", "secretsmanager.${var.region}.amazonaws.com"] }
        }
      }
    ]
  })
}

resource "aws_kms_alias" "tenantry" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.tenantry.key_id
}

# --- Network: the databases accept PostgreSQL only from Tenantry's processes.

resource "aws_security_group" "processes" {
  #checkov:skip=CKV2_AWS_5:Attached outside this module, to the app and control-plane instances or EKS pods (output process_security_group_id).
  name        = "${var.name}-processes"
  description = "Tenantry app and control-plane processes"
  vpc_id      = var.vpc_id

  egress {
    description = "PostgreSQL: registry, shared pools, dedicated instances"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.selected.cidr_block]
  }
  egress {
    description = "HTTPS: the RDS and Secrets Manager APIs"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

data "aws_vpc" "selected" {
  id = var.vpc_id
}

resource "aws_security_group" "databases" {
  name        = "${var.name}-databases"
  description = "Tenantry databases: PostgreSQL from Tenantry processes only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "PostgreSQL from Tenantry processes"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.processes.id]
  }
  # Logical replication between pools during moves: the target database
  # connects to the source.
  ingress {
    description = "PostgreSQL between Tenantry databases (logical replication)"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    self        = true
  }
  egress {
    description = "PostgreSQL between Tenantry databases (logical replication)"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    self        = true
  }
}

resource "aws_db_subnet_group" "tenantry" {
  name        = var.name
  description = "Private subnets of Tenantry's databases"
  subnet_ids  = var.subnet_ids
}

# --- The parameters online moves need.

resource "aws_db_parameter_group" "postgres15" {
  name        = "${var.name}-postgres15"
  family      = "postgres15"
  description = "Tenantry: logical replication for online moves"

  parameter {
    name         = "rds.logical_replication"
    value        = "1"
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_replication_slots"
    value        = "40"
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_wal_senders"
    value        = "40"
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_logical_replication_workers"
    value        = "20"
    apply_method = "pending-reboot"
  }
  # TLS only: Tenantry's connections (sqlx, rustls) and the subscriptions'
  # libpq connections both negotiate it.
  parameter {
    name         = "rds.force_ssl"
    value        = "1"
    apply_method = "pending-reboot"
  }
  parameter {
    name  = "wal_retrieve_retry_interval"
    value = "200"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
}

# --- The shared pool.

resource "aws_iam_role" "rds_monitoring" {
  name = "${var.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "${local.arn}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "shared_pool" {
  identifier     = "${var.name}-shared-1"
  engine         = "postgres"
  engine_version = "15"
  instance_class = var.instance_class

  allocated_storage     = var.allocated_storage
  max_allocated_storage = var.allocated_storage * 4
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.tenantry.arn

  db_name                       = "tenantry_shared_1"
  username                      = "tenantry_admin"
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.tenantry.arn

  db_subnet_group_name   = aws_db_subnet_group.tenantry.name
  vpc_security_group_ids = [aws_security_group.databases.id]
  parameter_group_name   = aws_db_parameter_group.postgres15.name
  publicly_accessible    = false
  multi_az               = true

  backup_retention_period             = 14
  copy_tags_to_snapshot               = true
  deletion_protection                 = true
  final_snapshot_identifier           = "${var.name}-shared-1-final"
  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  monitoring_interval                 = 30
  monitoring_role_arn                 = aws_iam_role.rds_monitoring.arn
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = aws_kms_key.tenantry.arn

  tags = {
    "managed-by" = "tenantry"
    "role"       = "shared-pool"
  }
}

# --- Secrets Tenantry's processes read (as TENANTRY_* variables).

resource "random_password" "app" {
  length  = 40
  special = false
}

resource "random_password" "owner" {
  length  = 40
  special = false
}

resource "random_password" "admin_token" {
  length  = 48
  special = false
}

resource "random_password" "gate_key" {
  length  = 48
  special = false
}

resource "random_password" "rds_master_key" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "app" {
  #checkov:skip=CKV2_AWS_57:Rotating the app role's password is a coordinated change (ALTER ROLE on every backend, then the apps); docs/deploy.md describes it.
  name        = "${var.name}/app"
  description = "The app process's secrets: the app role's password and the tenant gate's key (TENANTRY_* variables)"
  kms_key_id  = aws_kms_key.tenantry.arn
}

resource "aws_secretsmanager_secret_version" "app" {
  secret_id = aws_secretsmanager_secret.app.id
  secret_string = jsonencode({
    TENANTRY_APP__CREDENTIALS__PASSWORD = random_password.app.result
    TENANTRY_APP__GATE__CURRENT         = random_password.gate_key.result
  })
}

resource "aws_secretsmanager_secret" "control_plane" {
  #checkov:skip=CKV2_AWS_57:Owner and admin-token rotation is a coordinated change across control planes; docs/deploy.md describes it.
  name        = "${var.name}/control-plane"
  description = "The control plane's secrets: admin token, owner and app role passwords, RDS master-password key"
  kms_key_id  = aws_kms_key.tenantry.arn
}

resource "aws_secretsmanager_secret_version" "control_plane" {
  secret_id = aws_secretsmanager_secret.control_plane.id
  secret_string = jsonencode({
    TENANTRY_CONTROL_PLANE__ADMIN_TOKEN                   = random_password.admin_token.result
    TENANTRY_CONTROL_PLANE__OWNER__PASSWORD               = random_password.owner.result
    TENANTRY_CONTROL_PLANE__APP_PASSWORD                  = random_password.app.result
    TENANTRY_CONTROL_PLANE__RDS__MASTER_PASSWORD_KEY      = random_password.rds_master_key.result
    TENANTRY_CONTROL_PLANE__GATE__CURRENT                 = random_password.gate_key.result
  })
}

# --- What the control plane's provisioner may do: exactly the RDS calls it
# makes, on instances tagged managed-by = tenantry (and their snapshots).

data "aws_iam_policy_document" "provisioner" {
  statement {
    sid       = "CreateTaggedInstances"
    actions   = ["rds:CreateDBInstance", "rds:AddTagsToResource"]
    resources = ["${local.arn}:rds:${var.region}:${local.account}:db:tenantry-*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/managed-by"
      values   = ["tenantry"]
    }
  }
  statement {
    sid = "UseItsParameterGroupSubnetsAndKey"
    actions = ["rds:CreateDBInstance"]
    resources = [
      aws_db_parameter_group.postgres15.arn,
      aws_db_subnet_group.tenantry.arn,
    ]
  }
  # Only dedicated tenants' instances: made by the control plane, tagged
  # managed-by = tenantry and with the tenant's id. The shared pool's instance
  # is Terraform's (no tenant tag, and denied by name below).
  statement {
    sid       = "ChangeAndDeleteOnlyDedicatedTenants"
    actions   = ["rds:ModifyDBInstance", "rds:DeleteDBInstance", "rds:CreateDBSnapshot", "rds:ListTagsForResource"]
    resources = ["${local.arn}:rds:${var.region}:${local.account}:db:tenantry-*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/managed-by"
      values   = ["tenantry"]
    }
    condition {
      test     = "Null"
      variable = "aws:ResourceTag/tenantry:tenant-id"
      values   = ["false"]
    }
  }
  statement {
    sid       = "NeverTheSharedPool"
    effect    = "Deny"
    actions   = ["rds:ModifyDBInstance", "rds:DeleteDBInstance", "rds:RebootDBInstance", "rds:StopDBInstance"]
    resources = [aws_db_instance.shared_pool.arn]
  }
  statement {
    sid       = "FinalSnapshots"
    actions   = ["rds:CreateDBSnapshot", "rds:AddTagsToResource"]
    resources = ["${local.arn}:rds:${var.region}:${local.account}:snapshot:tenantry-*"]
  }
  statement {
    sid     = "Describe"
    actions = ["rds:DescribeDBInstances", "rds:DescribeDBSnapshots"]
    resources = [
      "${local.arn}:rds:${var.region}:${local.account}:db:tenantry-*",
      "${local.arn}:rds:${var.region}:${local.account}:snapshot:tenantry-*",
    ]
  }
  statement {
    sid       = "EncryptNewInstancesWithTheKey"
    actions   = ["kms:CreateGrant", "kms:DescribeKey", "kms:Decrypt", "kms:GenerateDataKey*"]
    resources = [aws_kms_key.tenantry.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["rds.${var.region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "ReadItsSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.control_plane.arn]
  }
}

resource "aws_iam_policy" "provisioner" {
  name        = "${var.name}-control-plane"
  description = "Tenantry control plane: RDS instances tagged managed-by = tenantry, their snapshots, its key and secret"
  policy      = data.aws_iam_policy_document.provisioner.json
}

data "aws_iam_policy_document" "app" {
  statement {
    sid       = "ReadItsSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.app.arn]
  }
}

resource "aws_iam_policy" "app" {
  name        = "${var.name}-app"
  description = "Tenantry app processes: their one secret"
  policy      = data.aws_iam_policy_document.app.json
}
