# What fills the configuration (deploy/tenantry.example.toml).

output "shared_pool_host" {
  description = "control_plane.cluster.host and the shared pool backend's host"
  value       = aws_db_instance.shared_pool.address
}

output "shared_pool_port" {
  description = "control_plane.cluster.port"
  value       = aws_db_instance.shared_pool.port
}

output "shared_pool_admin_user" {
  description = "control_plane.cluster.admin_user (its password: the secret below)"
  value       = aws_db_instance.shared_pool.username
}

output "shared_pool_admin_secret_arn" {
  description = "RDS-managed secret with the shared pool's administrator password"
  value       = aws_db_instance.shared_pool.master_user_secret[0].secret_arn
}

output "kms_key_arn" {
  description = "control_plane.rds.kms_key_id"
  value       = aws_kms_key.tenantry.arn
}

output "db_subnet_group" {
  description = "control_plane.rds.db_subnet_group"
  value       = aws_db_subnet_group.tenantry.name
}

output "parameter_group" {
  description = "control_plane.rds.parameter_group"
  value       = aws_db_parameter_group.postgres15.name
}

output "database_security_group_id" {
  description = "control_plane.rds.vpc_security_group_ids"
  value       = aws_security_group.databases.id
}

output "process_security_group_id" {
  description = "Attach to the app and control-plane instances or pods"
  value       = aws_security_group.processes.id
}

output "app_secret_arn" {
  description = "The app processes' secrets as JSON of TENANTRY_* variables (app role password, gate key)"
  value       = aws_secretsmanager_secret.app.arn
}

output "control_plane_secret_arn" {
  description = "TENANTRY_CONTROL_PLANE__* secrets"
  value       = aws_secretsmanager_secret.control_plane.arn
}

output "control_plane_policy_arn" {
  description = "Attach to the control plane's role"
  value       = aws_iam_policy.provisioner.arn
}

output "app_policy_arn" {
  description = "Attach to the app's role"
  value       = aws_iam_policy.app.arn
}
