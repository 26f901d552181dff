//! The one door to tenant data. A [`TenantTx`] is a transaction already
//! entered as one tenant (RLS is armed); every query made through it also
//! filters on that tenant and every insert stamps it. The transaction itself is
//! private to this module, so no handler can run an unscoped query.

use sea_orm::{ColumnTrait, DatabaseTransaction, DbErr, IntoActiveModel, QueryFilter, Select};
use uuid::Uuid;

use tenantry_core::entities::TenantScoped;

pub struct TenantTx {
    txn: DatabaseTransaction,
    tenant_id: Uuid,
}

impl TenantTx {
    pub(crate) fn new(txn: DatabaseTransaction, tenant_id: Uuid) -> Self {
        Self { txn, tenant_id }
    }

    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    /// `SELECT ... WHERE tenant_id = <this tenant>`.
    pub fn select<E: TenantScoped>(&self) -> Select<E> {
        E::find().filter(E::tenant_column().eq(self.tenant_id))
    }

    /// One row by id, or `None` (also for another tenant's id).
    pub async fn get<E: TenantScoped>(&self, id: Uuid) -> Result<Option<E::Model>, DbErr> {
        self.select::<E>().filter(E::id_column().eq(id)).one(&self.txn).await
    }

    /// Rows of a scoped select.
    pub async fn all<E: TenantScoped>(&self, select: Select<E>) -> Result<Vec<E::Model>, DbErr> {
        select.all(&self.txn).await
    }

    /// Deletes one row by id; `false` when there was none for this tenant.
    pub async fn delete<E: TenantScoped>(&self, id: Uuid) -> Result<bool, DbErr> {
        let res = E::delete_many()
            .filter(E::tenant_column().eq(self.tenant_id))
            .filter(E::id_column().eq(id))
            .exec(&self.txn)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Inserts a row built by `build`, which receives this tenant's id to stamp.
    pub async fn insert<E, A>(&self, build: impl FnOnce(Uuid) -> A) -> Result<E::Model, DbErr>
    where
        E: TenantScoped,
        A: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
        E::Model: IntoActiveModel<A>,
    {
        build(self.tenant_id).insert(&self.txn).await
    }

    /// Saves changes to a row previously read through this transaction (so it
    /// belongs to this tenant: its primary key starts with our tenant id).
    pub async fn update<E, A>(&self, model: A) -> Result<E::Model, DbErr>
    where
        E: TenantScoped,
        A: sea_orm::ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
        E::Model: IntoActiveModel<A>,
    {
        debug_assert_eq!(
            model.get(E::tenant_column()).into_value(),
            Some(sea_orm::Value::from(self.tenant_id)),
            "update of a row that is not this tenant's"
        );
        model.update(&self.txn).await
    }

    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }
}
