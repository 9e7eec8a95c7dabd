//! One BMC driver per host and credentials version, reused across reconciles so Redfish
//! sessions and IPMI sessions are not re-established on every poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmetal_api::bmc_address::BmcAddress;
use vmetal_bmc::{Bmc, BmcError, ConnectOptions, Credentials};

/// Makes drivers; tests can substitute their own.
pub trait BmcFactory: Send + Sync {
    /// A driver for `address` with `credentials`.
    fn connect(
        &self,
        address: &BmcAddress,
        credentials: Credentials,
        options: ConnectOptions,
    ) -> Result<Arc<dyn Bmc>, BmcError>;
}

/// The real drivers (Redfish, IPMI).
#[derive(Debug, Default)]
pub struct RealBmcFactory;

impl BmcFactory for RealBmcFactory {
    fn connect(
        &self,
        address: &BmcAddress,
        credentials: Credentials,
        options: ConnectOptions,
    ) -> Result<Arc<dyn Bmc>, BmcError> {
        vmetal_bmc::connect(address, credentials, options).map(Arc::from)
    }
}

/// Cache key: host uid plus everything that, when changed, needs a new driver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host_uid: String,
    address: String,
    credentials_version: String,
    insecure: bool,
}

/// The pool.
pub struct BmcPool {
    factory: Arc<dyn BmcFactory>,
    options: ConnectOptions,
    drivers: Mutex<HashMap<Key, Arc<dyn Bmc>>>,
    metrics: Option<crate::metrics::Metrics>,
}

impl BmcPool {
    /// A pool over `factory`, with `options` as the base connect options.
    pub fn new(factory: Arc<dyn BmcFactory>, options: ConnectOptions) -> Self {
        Self {
            factory,
            options,
            drivers: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Time every call of the drivers made from now on into `metrics`.
    pub fn set_metrics(&mut self, metrics: crate::metrics::Metrics) {
        self.metrics = Some(metrics);
    }

    /// The driver for a host, creating it when new or when address/credentials changed.
    pub fn get(
        &self,
        host_uid: &str,
        address: &BmcAddress,
        credentials: Credentials,
        credentials_version: &str,
        insecure: bool,
    ) -> Result<Arc<dyn Bmc>, BmcError> {
        let key = Key {
            host_uid: host_uid.to_string(),
            address: address.to_string(),
            credentials_version: credentials_version.to_string(),
            insecure,
        };
        let mut drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = drivers.get(&key) {
            return Ok(d.clone());
        }
        // Drop stale drivers of this host (old address or credentials).
        drivers.retain(|k, _| k.host_uid != host_uid);
        let options = ConnectOptions {
            disable_certificate_verification: insecure,
            ..self.options.clone()
        };
        let mut driver = self.factory.connect(address, credentials, options)?;
        if let Some(metrics) = &self.metrics {
            driver = metrics.timed_bmc(driver);
        }
        drivers.insert(key, driver.clone());
        Ok(driver)
    }

    /// Forget a host's driver (on delete).
    pub fn forget(&self, host_uid: &str) {
        self.drivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.host_uid != host_uid);
    }
}
