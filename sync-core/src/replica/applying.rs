//! The applying session: while tidesync writes what it pulled, this
//! session is listed in `_tidesync_applying` and the capture triggers skip
//! its writes. The row is removed before commit and vanishes on rollback,
//! so a crashed apply never leaves capture switched off.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::tables::APPLYING;
use crate::dialect;
use crate::model::error::Result;

/// Insert this session into `_tidesync_applying`: the capture triggers skip
/// its writes until [`end_applying`] (or the end of the transaction).
pub(crate) async fn begin_applying(tx: &DatabaseTransaction) -> Result<()> {
    let d = dialect::of_db(tx)?;
    let q = Query::insert()
        .into_table(Alias::new(APPLYING))
        .columns([Alias::new("session")])
        .values_panic([Expr::cust(d.session_expr())])
        .on_conflict(
            OnConflict::column(Alias::new("session"))
                .do_nothing_on([Alias::new("session")])
                .to_owned(),
        )
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

/// Remove this session from `_tidesync_applying`.
pub(crate) async fn end_applying(tx: &DatabaseTransaction) -> Result<()> {
    let d = dialect::of_db(tx)?;
    let q = Query::delete()
        .from_table(Alias::new(APPLYING))
        .and_where(Expr::col(Alias::new("session")).eq(Expr::cust(d.session_expr())))
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

/// Whether this session is listed as applying (a pulled page that captures
/// pending writes first is).
pub(crate) async fn is_applying(tx: &DatabaseTransaction) -> Result<bool> {
    let d = dialect::of_db(tx)?;
    let q = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new(APPLYING))
        .and_where(Expr::col(Alias::new("session")).eq(Expr::cust(d.session_expr())))
        .to_owned();
    Ok(tx.query_one(&q).await?.is_some())
}
