//! The chain-state cache: what the break-glass path asks of the chain, answered from the
//! store the follower keeps current (at most one block stale). A miss is filled with one
//! read-only call and kept; after a gap, `refresh_all` re-reads every cached entry.

use std::sync::Arc;

use super::contracts::{self, Contracts};
use super::rpc::{NodeClient, RpcError};
use crate::domain::PatientId;
use crate::stacks::{Address, Value};
use crate::store::{Batch, Consent, ConsentKey, Preferences, ProviderState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("{0}: the node's answer does not have the expected shape")]
    Shape(String),
}

#[derive(Clone)]
pub struct ChainState {
    pub store: Arc<dyn Store>,
    pub rpc: NodeClient,
    pub contracts: Contracts,
}

impl ChainState {
    fn sender(&self) -> &Address {
        &self.contracts.address
    }

    async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        crate::store::apply_async(&self.store, batch).await
    }

    /// An access-control read-only function of one principal.
    async fn read_of_principal(
        &self,
        function: &str,
        principal: &str,
    ) -> Result<Value, StateError> {
        let arg = contracts::principal_value(principal)
            .ok_or_else(|| StateError::Shape(format!("principal {principal}")))?;
        Ok(self
            .rpc
            .call_read(
                &self.contracts.access_control(),
                function,
                &[arg],
                self.sender(),
            )
            .await?)
    }

    async fn read_provider(&self, principal: &str) -> Result<ProviderState, StateError> {
        let v = self.read_of_principal("get-provider", principal).await?;
        contracts::provider_state(&v).ok_or_else(|| StateError::Shape("get-provider".into()))
    }

    async fn read_preferences(&self, patient: &PatientId) -> Result<Preferences, StateError> {
        let v = self
            .rpc
            .call_read(
                &self.contracts.patient_consent(),
                "get-emergency-preferences",
                &[Value::buffer(patient.0)],
                self.sender(),
            )
            .await?;
        contracts::preferences(&v)
            .ok_or_else(|| StateError::Shape("get-emergency-preferences".into()))
    }

    async fn read_consent(&self, key: &ConsentKey) -> Result<Consent, StateError> {
        let provider = contracts::principal_value(&key.provider)
            .ok_or_else(|| StateError::Shape("provider".into()))?;
        let args = [
            Value::buffer(key.patient.0),
            provider,
            Value::ascii(key.data_type.as_str()),
            Value::ascii(key.purpose.as_str()),
        ];
        let v = self
            .rpc
            .call_read(
                &self.contracts.patient_consent(),
                "get-consent",
                &args,
                self.sender(),
            )
            .await?;
        contracts::consent(&v).ok_or_else(|| StateError::Shape("get-consent".into()))
    }

    async fn read_responder(&self, principal: &str) -> Result<bool, StateError> {
        let v = self.read_of_principal("is-responder", principal).await?;
        contracts::boolean(Some(&v)).ok_or_else(|| StateError::Shape("is-responder".into()))
    }

    pub async fn provider(&self, principal: &str) -> Result<ProviderState, StateError> {
        if let Some(s) = self.store.provider(principal)? {
            return Ok(s);
        }
        let s = self.read_provider(principal).await?;
        self.write(Batch {
            providers: vec![(principal.to_string(), Some(s.clone()))],
            ..Batch::default()
        })
        .await?;
        Ok(s)
    }

    pub async fn preferences(&self, patient: &PatientId) -> Result<Preferences, StateError> {
        if let Some(p) = self.store.preferences(patient)? {
            return Ok(p);
        }
        let p = self.read_preferences(patient).await?;
        self.write(Batch {
            preferences: vec![(*patient, p.clone())],
            ..Batch::default()
        })
        .await?;
        Ok(p)
    }

    pub async fn consent(&self, key: &ConsentKey) -> Result<Consent, StateError> {
        if let Some(c) = self.store.consent(key)? {
            return Ok(c);
        }
        let c = self.read_consent(key).await?;
        self.write(Batch {
            consents: vec![(key.clone(), c.clone())],
            ..Batch::default()
        })
        .await?;
        Ok(c)
    }

    pub async fn is_responder(&self, principal: &str) -> Result<bool, StateError> {
        if let Some(r) = self.store.responder(principal)? {
            return Ok(r);
        }
        let r = self.read_responder(principal).await?;
        self.write(Batch {
            responders: vec![(principal.to_string(), r)],
            ..Batch::default()
        })
        .await?;
        Ok(r)
    }

    /// Re-reads every cached entry from the node, for after a gap in the block stream. The
    /// result goes into `batch` so that it lands with the new tip.
    pub async fn refresh_all(&self, batch: &mut Batch) -> Result<(), StateError> {
        for who in self.store.providers()? {
            let s = self.read_provider(&who).await?;
            batch.providers.push((who, Some(s)));
        }
        for patient in self.store.patients()? {
            let p = self.read_preferences(&patient).await?;
            batch.preferences.push((patient, p));
        }
        for who in self.store.responders()? {
            let r = self.read_responder(&who).await?;
            batch.responders.push((who, r));
        }
        for key in self.store.consents()? {
            let c = self.read_consent(&key).await?;
            batch.consents.push((key, c));
        }
        Ok(())
    }
}
