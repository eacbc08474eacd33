//! A port mapping on the home router (UPnP IGD), for a host behind NAT (`host --upnp`): find the gateway by SSDP,
//! learn its external address, map one TCP port to the host's listen port, renew the lease before it ends, and
//! delete the mapping on shutdown.
//!
//! This talks to the router directly through `igd-next` instead of libp2p's `upnp` behaviour, which maps nothing
//! when the router's external address is not public: right in the wild (a router behind carrier-grade NAT cannot
//! be reached from outside whatever it maps), wrong for a lab or a LAN nested behind another LAN, where
//! [`UpnpConfig::allow_private`] maps anyway. It runs off the swarm's loop; the host hands the external address to
//! the swarm ([`super::Client::add_external_address`]) so identify advertises it.
//!
//! It must never run unless asked: a search sends SSDP multicast to the machine's real network.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use igd_next::{
    aio::{tokio::Tokio, Gateway},
    AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions,
};
use libp2p::{multiaddr::Protocol, Multiaddr};
use tracing::{debug, info, warn};

/// How long the SSDP search waits for a gateway to answer.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The lease asked for by default; the mapping is renewed at half of it, so a host that dies leaves it for at most
/// this long.
pub const LEASE: Duration = Duration::from_secs(3600);
/// How long deleting the mapping at shutdown may take before the host stops anyway.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the router's mapping table shows for the mapping.
const DESCRIPTION: &str = "blenderdist host";

/// `host --upnp`'s settings.
#[derive(Debug, Clone)]
pub struct UpnpConfig {
    /// Map even when the router's external address is private (`--upnp-allow-private`): for labs and for a LAN
    /// nested behind another LAN whose volunteers sit on the outer one.
    pub allow_private: bool,
    /// The lease to ask for ([`LEASE`]; shorter only in tests of the renewal), whole seconds, at least 2.
    pub lease: Duration,
}

impl Default for UpnpConfig {
    fn default() -> Self {
        Self { allow_private: false, lease: LEASE }
    }
}

/// Why no port was mapped; the text is printed in the host's ready line.
#[derive(Debug, thiserror::Error)]
pub enum UpnpError {
    #[error("no UPnP gateway answered within {} s (is UPnP enabled on the router?)", SEARCH_TIMEOUT.as_secs())]
    NoGateway,
    #[error("the search for a UPnP gateway failed: {0}")]
    Search(String),
    #[error("the UPnP gateway at {gateway} did not give its external address: {reason}")]
    ExternalAddress { gateway: SocketAddr, reason: String },
    #[error(
        "the UPnP gateway's external address {ip} is private: this router sits behind another NAT (or in a lab), \
         so volunteers outside cannot reach the mapping; pass --upnp-allow-private to map anyway"
    )]
    PrivateExternal { ip: IpAddr },
    #[error("the UPnP gateway at {gateway} refused to map TCP port {port}: {reason}")]
    Refused { gateway: SocketAddr, port: u16, reason: String },
    #[error("this host does not listen on an IPv4 address the UPnP gateway at {gateway} can forward to: {reason}")]
    NoLocalAddress { gateway: SocketAddr, reason: String },
}

/// A TCP port mapped on the gateway: `external` forwards to `internal`.
#[derive(Debug)]
pub struct PortMapping {
    gateway: Gateway<Tokio>,
    /// What volunteers outside dial.
    pub external: SocketAddr,
    /// This host's listen address on the gateway's network.
    pub internal: SocketAddr,
    /// The lease granted, in seconds; 0: permanent (routers that only support those), still deleted on shutdown.
    lease: u32,
}

impl PortMapping {
    /// Finds the gateway and maps a TCP port to the one of `listening` (this host's listen addresses) that is on
    /// the route to the gateway: the same port number outside when it is free, else any port the gateway picks.
    pub async fn create(listening: &[SocketAddr], config: &UpnpConfig) -> Result<Self, UpnpError> {
        let options = SearchOptions { timeout: Some(SEARCH_TIMEOUT), ..Default::default() };
        let gateway = igd_next::aio::tokio::search_gateway(options).await.map_err(|e| match e {
            igd_next::SearchError::NoResponseWithinTimeout => UpnpError::NoGateway,
            other => UpnpError::Search(other.to_string()),
        })?;
        debug!(gateway = %gateway.addr, "found a UPnP gateway");
        let external_ip = gateway
            .get_external_ip()
            .await
            .map_err(|e| UpnpError::ExternalAddress { gateway: gateway.addr, reason: e.to_string() })?;
        if !is_public(external_ip) && !config.allow_private {
            return Err(UpnpError::PrivateExternal { ip: external_ip });
        }
        let local_ip = local_ip_towards(gateway.addr).await?;
        let internal = listening.iter().find(|a| a.ip() == local_ip).copied().ok_or_else(|| {
            let reason = format!("its address towards the gateway is {local_ip}; it listens on {listening:?}");
            UpnpError::NoLocalAddress { gateway: gateway.addr, reason }
        })?;
        let lease = config.lease.as_secs().clamp(2, u64::from(u32::MAX)) as u32;
        let (port, lease) = add_mapping(&gateway, internal, lease).await?;
        Ok(Self { external: SocketAddr::new(external_ip, port), internal, lease, gateway })
    }

    /// The external address as a multiaddr (without `/p2p/`).
    pub fn multiaddr(&self) -> Multiaddr {
        Multiaddr::from(self.external.ip()).with(Protocol::Tcp(self.external.port()))
    }

    /// Keeps the mapping alive until `stop`, then deletes it. A failed renewal is retried at the next one and
    /// logged; the mapping usually survives until its lease ends.
    pub async fn keep(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let renew = match self.lease {
                0 => None,
                lease => Some(Duration::from_secs(u64::from(lease) / 2)),
            };
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(renew.unwrap_or(Duration::MAX)), if renew.is_some() => {
                    match self.gateway.add_port(TCP, self.external.port(), self.internal, self.lease, DESCRIPTION).await {
                        Ok(()) => debug!(external = %self.external, "UPnP port mapping renewed"),
                        Err(e) => warn!("cannot renew the UPnP port mapping {}: {e}", self.external),
                    }
                }
            }
        }
        let remove = self.gateway.remove_port(TCP, self.external.port());
        match tokio::time::timeout(REMOVE_TIMEOUT, remove).await {
            Ok(Ok(())) => info!("UPnP port mapping {} removed", self.external),
            Ok(Err(e)) => warn!("cannot remove the UPnP port mapping {}: {e}", self.external),
            Err(_) => warn!("the UPnP gateway did not answer the removal of {} in time", self.external),
        }
    }
}

const TCP: PortMappingProtocol = PortMappingProtocol::TCP;

/// Maps `internal`'s port: the same number outside first, any other if that one is taken. Routers that only keep
/// permanent mappings get one (deleted on shutdown all the same). Returns the external port and the lease.
async fn add_mapping(gateway: &Gateway<Tokio>, internal: SocketAddr, lease: u32) -> Result<(u16, u32), UpnpError> {
    let refused = |reason: String| UpnpError::Refused { gateway: gateway.addr, port: internal.port(), reason };
    match gateway.add_port(TCP, internal.port(), internal, lease, DESCRIPTION).await {
        Ok(()) => return Ok((internal.port(), lease)),
        Err(AddPortError::OnlyPermanentLeasesSupported) => {
            return match gateway.add_port(TCP, internal.port(), internal, 0, DESCRIPTION).await {
                Ok(()) => Ok((internal.port(), 0)),
                Err(e) => Err(refused(e.to_string())),
            };
        }
        Err(AddPortError::PortInUse) => debug!("external port {} is taken; asking for any", internal.port()),
        Err(e) => return Err(refused(e.to_string())),
    }
    match gateway.add_any_port(TCP, internal, lease, DESCRIPTION).await {
        Ok(port) => Ok((port, lease)),
        Err(AddAnyPortError::OnlyPermanentLeasesSupported) => {
            let port = gateway.add_any_port(TCP, internal, 0, DESCRIPTION).await.map_err(|e| refused(e.to_string()))?;
            Ok((port, 0))
        }
        Err(e) => Err(refused(e.to_string())),
    }
}

/// This machine's address on the route to `gateway`: a connected UDP socket learns it without sending anything.
async fn local_ip_towards(gateway: SocketAddr) -> Result<IpAddr, UpnpError> {
    let failed = |e: std::io::Error| UpnpError::NoLocalAddress { gateway, reason: e.to_string() };
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.map_err(failed)?;
    socket.connect(gateway).await.map_err(failed)?;
    Ok(socket.local_addr().map_err(failed)?.ip())
}

/// Whether volunteers on the internet could reach `ip`: not private, shared (carrier-grade NAT), loopback,
/// link-local, reserved for tests or documentation, multicast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.is_unspecified()
                || ip.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0))
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && ip.segments()[1] == 0x0db8)
        }
    }
}
