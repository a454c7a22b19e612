//! `POST /transfers` and `POST /payouts`: money the platform asks for, with no charge behind it.
//! Each is validated, stored as a step with its reference in one conditional write, and then
//! queued: from there the same worker runs it, with the same guarantees, as a planned step.

use serde_json::json;

use super::request::Fields;
use super::{ApiError, ApiReply, PlatformApi, json_object};
use crate::clock::Clock;
use crate::domain::change::step_changes;
use crate::domain::reference::{ReferenceKind, ReferenceRecord, ReferenceState, digest};
use crate::domain::step::{
    CauseKind, ChargeId, PaymentKey, PlatformRequest, Step, StepCause, StepKind, StepRef,
};
use crate::store::{AccountStore, CommitOutcome, PlatformWrite, StoreError};

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    pub(super) async fn request_transfer(&self, body: &[u8]) -> Result<ApiReply, ApiError> {
        let object = json_object(body)?;
        let fields = Fields(&object);
        fields.only(&[
            "reference",
            "destination",
            "amount",
            "currency",
            "description",
            "source_transaction",
            "transfer_group",
        ])?;
        let reference = fields.reference()?;
        let destination = fields.account_id("destination")?;
        let amount = fields.amount()?;
        let currency = fields.currency()?;
        let description = fields.optional_str("description")?;
        let source_transaction = fields.optional_str("source_transaction")?;
        if source_transaction.is_some_and(|charge| !(charge.starts_with("ch_") || charge.starts_with("py_")))
        {
            return Err(ApiError::invalid(
                "source_transaction",
                "source_transaction must be a charge id (ch_… or py_…)",
            ));
        }
        let transfer_group = fields.optional_str("transfer_group")?;
        let fingerprint = digest(
            &json!([
                "transfer",
                destination,
                amount,
                currency,
                description,
                source_transaction,
                transfer_group
            ])
            .to_string(),
        );
        if let Some(answer) = self.repeated(ReferenceKind::Transfer, reference, &fingerprint).await? {
            return Ok(answer);
        }
        let account = self.known_account(destination.as_str()).await?;
        let key = digest(reference);
        let mut step = Step::planned(
            StepKind::Transfer,
            format!("tr:req:{key}"),
            account.account_id,
            amount,
            currency,
            self.clock.now_unix(),
        );
        // Its own payment partition: no charge's refund plans against it.
        step.payment_key = Some(format!("req:{key}").into());
        step.source_charge = source_transaction.map(ChargeId::from);
        step.transfer_group = transfer_group.map(str::to_owned);
        step.requested = Some(PlatformRequest {
            reference: reference.to_owned(),
            description: description.map(str::to_owned),
            method: None,
        });
        step.cause = Some(StepCause::new(CauseKind::PlatformRequest, reference));
        self.store_requested(ReferenceKind::Transfer, reference, fingerprint, step).await
    }

    pub(super) async fn request_payout(&self, body: &[u8]) -> Result<ApiReply, ApiError> {
        let object = json_object(body)?;
        let fields = Fields(&object);
        fields.only(&["reference", "account", "amount", "currency", "method"])?;
        let reference = fields.reference()?;
        let account_id = fields.account_id("account")?;
        let amount = fields.amount()?;
        let currency = fields.currency()?;
        let method = fields.optional_choice("method", &["standard", "instant"])?;
        let fingerprint = digest(&json!(["payout", account_id, amount, currency, method]).to_string());
        if let Some(answer) = self.repeated(ReferenceKind::Payout, reference, &fingerprint).await? {
            return Ok(answer);
        }
        let account = self.known_account(account_id.as_str()).await?;
        if account.payout_schedule_interval.as_deref().is_some_and(|interval| interval != "manual") {
            return Err(ApiError::invalid(
                "account",
                "the account is not on manual payouts: Stripe pays its balance out on its schedule",
            ));
        }
        let mut step = Step::planned(
            StepKind::Payout,
            format!("po:req:{}", digest(reference)),
            account.account_id,
            amount,
            currency,
            self.clock.now_unix(),
        );
        step.requested = Some(PlatformRequest {
            reference: reference.to_owned(),
            description: None,
            method: method.map(str::to_owned),
        });
        step.cause = Some(StepCause::new(CauseKind::PlatformRequest, reference));
        self.store_requested(ReferenceKind::Payout, reference, fingerprint, step).await
    }

    /// The answer to a repeated request: 200 and its step for the same parameters, 409 for others;
    /// `None` for a reference not seen before.
    async fn repeated(
        &self,
        kind: ReferenceKind,
        reference: &str,
        fingerprint: &str,
    ) -> Result<Option<ApiReply>, ApiError> {
        let Some(record) = self.store.load_reference(kind, reference).await? else { return Ok(None) };
        if record.fingerprint != fingerprint || record.state != ReferenceState::Bound {
            return Err(ApiError::ReferenceConflict);
        }
        let step = self.requested_step(&record).await?;
        // The first call may have stored it and then failed to queue it.
        self.send(&step).await;
        Ok(Some(ApiReply::of(200, &step)))
    }

    async fn requested_step(&self, record: &ReferenceRecord) -> Result<Step, ApiError> {
        let corrupt =
            || ApiError::Store(StoreError::Corrupt("a bound reference names no stored step".into()));
        let (Some(step_id), Some(destination)) = (&record.object_id, &record.destination) else {
            return Err(corrupt());
        };
        let (kind, payment_key) = match record.kind {
            ReferenceKind::Payout => (StepKind::Payout, None),
            _ => (StepKind::Transfer, Some(PaymentKey::from(format!("req:{}", digest(&record.reference))))),
        };
        let step =
            StepRef { step_id: step_id.clone().into(), kind, destination: destination.clone(), payment_key };
        self.store.load_step(&step).await?.ok_or_else(corrupt)
    }

    /// Stores the reference and its step (with its change) in one write, then queues the step.
    async fn store_requested(
        &self,
        kind: ReferenceKind,
        reference: &str,
        fingerprint: String,
        step: Step,
    ) -> Result<ApiReply, ApiError> {
        if self.stripe_livemode().is_none() {
            return Err(ApiError::NotConfigured(
                "this deployment's mode is unknown: set CONNECT_FLOW_LIVEMODE or STRIPE_API_KEY",
            ));
        }
        let step = Step { livemode: self.stripe_livemode(), ..step };
        let mut record = ReferenceRecord::claim(kind, reference, fingerprint.clone());
        record.state = ReferenceState::Bound;
        record.object_id = Some(step.step_id.clone().into());
        record.destination = Some(step.destination.clone());
        let changes = step_changes(None, &step, step.created_at);
        let write = PlatformWrite {
            reference: &record,
            account: None,
            new_steps: std::slice::from_ref(&step),
            changes: &changes,
        };
        match self.store.commit_platform(&write).await? {
            CommitOutcome::Committed => {
                tracing::info!(
                    step_id = step.step_id.as_str(),
                    kind = step.kind.as_str(),
                    "platform request stored"
                );
                self.send(&step).await;
                Ok(ApiReply::of(202, &step))
            }
            // A concurrent call with the same reference stored first.
            _ => self.repeated(kind, reference, &fingerprint).await?.ok_or_else(|| {
                ApiError::Store(StoreError::Unavailable("the reference kept changing".into()))
            }),
        }
    }

    /// The mode steps are stored in: the deployment's, or else its key's.
    fn stripe_livemode(&self) -> Option<bool> {
        self.settings.expected_livemode.or_else(|| self.stripe.as_ref().and_then(|stripe| stripe.livemode()))
    }
}
