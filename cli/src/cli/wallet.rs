//! `cocoon wallet|channel|ledger`: a data dir's TON wallet, payment channels and settlement.

use clap::Subcommand;
use cocoon_worker::accounts;

use super::*;

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCmd {
    /// Create the identity (and so the wallet) if there is none; print the address.
    New(AccountArgs),
    /// Print the address, and with --chain the balance.
    Show(AccountArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChannelCmd {
    /// The channels in the journal, with their on-chain state when --chain is given.
    List(AccountArgs),
    /// Open a channel with a worker (deploy + deposit on chain).
    Open {
        #[command(flatten)]
        account: AccountArgs,
        /// The worker's key (hex; its advert's public key).
        #[arg(long)]
        worker_key: String,
        /// The worker's payout wallet (`0:<hex>`; its `payout:` line).
        #[arg(long)]
        payout: String,
        /// Deposit, nanoTON.
        #[arg(long, default_value_t = 1_000_000_000)]
        deposit: u64,
    },
    /// Add to a channel's deposit.
    Topup {
        #[command(flatten)]
        account: AccountArgs,
        /// The channel (hex account id).
        #[arg(long)]
        channel: String,
        /// nanoTON to add.
        #[arg(long)]
        amount: u64,
    },
    /// Close a channel as the client (the worker then has the challenge window to post its
    /// voucher); run again after the window to pay out.
    Close {
        #[command(flatten)]
        account: AccountArgs,
        /// The channel (hex account id).
        #[arg(long)]
        channel: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCmd {
    /// Settle every channel of a stopped worker now (a running worker settles by its policy
    /// and on shutdown).
    Settle(AccountArgs),
}

pub(crate) async fn wallet_cmd(cmd: WalletCmd) -> anyhow::Result<()> {
    let (WalletCmd::New(args) | WalletCmd::Show(args)) = &cmd;
    let dir = args.dir();
    if matches!(cmd, WalletCmd::Show(_)) {
        anyhow::ensure!(
            dir.join("identity.key").exists(),
            "no identity in {}: run `cocoon wallet new` first",
            dir.display()
        );
    }
    let key = accounts::key(&dir)?;
    let chain = args.chain(&key)?;
    let info = accounts::wallet_info(&key, chain.as_deref()).await?;
    if args.json {
        return print_json(&info);
    }
    println!("address: {}", info.address);
    println!("public key: {}", info.public_key);
    if let (Some(balance), Some(state)) = (&info.balance, &info.state) {
        println!("balance: {balance} nanoTON ({state})");
    }
    Ok(())
}

pub(crate) async fn channel_cmd(cmd: ChannelCmd) -> anyhow::Result<()> {
    match cmd {
        ChannelCmd::List(args) => {
            let dir = args.dir();
            let key = accounts::key(&dir)?;
            let chain = args.chain(&key)?;
            let rows = accounts::channels(&dir, chain.as_deref()).await?;
            if args.json {
                return print_json(&rows);
            }
            for r in &rows {
                println!(
                    "{} {} paid {} of {} (seq {}){}",
                    r.role,
                    r.channel,
                    r.paid,
                    r.deposit,
                    r.seq,
                    r.onchain
                        .as_ref()
                        .map(|s| format!(", on chain: {s}"))
                        .unwrap_or_default()
                );
            }
            if rows.is_empty() {
                println!("no channels");
            }
        }
        ChannelCmd::Open {
            account,
            worker_key,
            payout,
            deposit,
        } => {
            let dir = account.dir();
            let key = accounts::key(&dir)?;
            let ledger = accounts::client_ledger(
                &dir,
                &key,
                account.need_chain(&key)?,
                cocoon_client::payments::PaymentConfig {
                    deposit,
                    ..Default::default()
                },
            )?;
            let channel = accounts::open(
                &ledger,
                accounts::parse_channel(&worker_key)?,
                accounts::parse_channel(&payout)?,
            )
            .await?;
            if account.json {
                return print_json(&serde_json::json!({ "channel": channel }));
            }
            println!("channel: {channel}");
        }
        ChannelCmd::Topup {
            account,
            channel,
            amount,
        } => {
            let dir = account.dir();
            let key = accounts::key(&dir)?;
            let chain = account.need_chain(&key)?;
            accounts::top_up(&dir, &chain, accounts::parse_channel(&channel)?, amount).await?;
            if account.json {
                return print_json(&serde_json::json!({ "channel": channel, "topped_up": amount }));
            }
            println!("topped up {channel} by {amount} nanoTON");
        }
        ChannelCmd::Close { account, channel } => {
            let dir = account.dir();
            let key = accounts::key(&dir)?;
            let chain = account.need_chain(&key)?;
            let done = accounts::close(&chain, accounts::parse_channel(&channel)?).await?;
            if account.json {
                return print_json(&serde_json::json!({ "channel": channel, "action": done }));
            }
            println!("{done} {channel}");
        }
    }
    Ok(())
}
