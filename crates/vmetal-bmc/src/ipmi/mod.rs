//! IPMI 2.0 over LAN (RMCP+ "lanplus"): sans-IO codec and a tokio UDP client.
