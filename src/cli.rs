//! Command-line types (clap). Parsing only: what each subcommand does lives in its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The broker address used when none is given.
pub const DEFAULT_BROKER: &str = "127.0.0.1:5672";

/// clacks: an AMQP 0-10 broker and its client tools in one binary.
#[derive(Debug, Parser)]
#[command(name = "clacks", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text (coloured only on a terminal) or as one JSON object each.
    #[arg(long, global = true, env = "CLACKS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (settings: --config file, then CLACKS_* environment, then flags).
    Serve(ServeArgs),
    /// Send messages to a queue or an exchange, like qpid-send.
    Send(SendArgs),
    /// Receive messages from a queue or an exchange binding, like qpid-receive.
    Receive(ReceiveArgs),
    /// Measure throughput and latency with producers and consumers on one fresh queue.
    Bench(BenchArgs),
    /// Manage the local users in a stopped broker's data directory.
    #[command(subcommand)]
    User(UserCommand),
    /// Call a Clacks command (JSON-RPC over the domain's command queue).
    Call(CallArgs),
    /// Run the Clacks agent alone against a broker (ours or qpidd), reconnecting as needed.
    Agent(AgentArgs),
    /// List the Clacks commands on the bus, grouped by target.
    Methods(MethodsArgs),
    /// Show the Clacks nodes of the domain and their load.
    Nodes(NodesArgs),
    /// Print the domain's events as they arrive.
    Events(EventsArgs),
    /// Send an event (XML) through the agent's sendEvent.
    SendEvent(SendEventArgs),
    /// Interactive Clacks shell: call commands with line editing, history and completion.
    Shell(ShellArgs),
    /// The queues with their depth, counters and rates, from the agent's broker target
    /// (the same figures qpid-stat -q shows).
    Queues(QueuesArgs),
    /// Federation links of the broker the agent runs in (over the bus).
    #[command(subcommand)]
    Link(LinkCommand),
    /// Federation routes over the links (over the bus).
    #[command(subcommand)]
    Route(RouteCommand),
    /// Write the man pages and the bash, zsh and fish completions into a directory
    /// (for packagers).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// `clacks generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where the files go (made if missing).
    #[arg(value_name = "DIR")]
    pub out: PathBuf,
}

/// `clacks link ...`.
#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Add a link to another broker (ours or qpidd).
    Add {
        #[command(flatten)]
        conn: AgentConnArgs,
        /// The link's name.
        name: String,
        /// The remote broker: amqp[s]://user:password@host:port.
        #[arg(value_name = "URL")]
        remote: String,
        /// Keep the link in the store across restarts.
        #[arg(long)]
        durable: bool,
        /// For an amqps:// link: CA certificates (PEM, a path on the broker's machine)
        /// to trust instead of the system's.
        #[arg(long, value_name = "PEM")]
        link_ca: Option<String>,
    },
    /// Remove a link and its routes.
    Del {
        #[command(flatten)]
        conn: AgentConnArgs,
        /// The link's name.
        name: String,
    },
    /// List the links and their state.
    List {
        #[command(flatten)]
        conn: AgentConnArgs,
        /// One line of JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `clacks route ...`.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Add a route: from a remote exchange or queue into a local exchange (or, with
    /// --push, from a local one to the remote broker).
    Add(RouteAddArgs),
    /// Remove a route.
    Del {
        #[command(flatten)]
        conn: AgentConnArgs,
        /// The route's name.
        name: String,
    },
    /// List the routes and the messages each moved.
    List {
        #[command(flatten)]
        conn: AgentConnArgs,
        /// One line of JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `clacks route add`.
#[derive(Debug, Args)]
pub struct RouteAddArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
    /// The route's name.
    pub name: String,
    /// The link it travels.
    #[arg(long)]
    pub link: String,
    /// Take what this exchange routes (with --key; --query for an xml exchange).
    #[arg(long, conflicts_with = "queue", required_unless_present = "queue")]
    pub exchange: Option<String>,
    /// The binding key on the source exchange.
    #[arg(long, default_value = "")]
    pub key: String,
    /// The XQuery of the binding on an xml source exchange.
    #[arg(long)]
    pub query: Option<String>,
    /// Take every message of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// The exchange on the receiving broker.
    #[arg(long)]
    pub dest: String,
    /// Replace the routing key on the way.
    #[arg(long)]
    pub dest_key: Option<String>,
    /// From this broker to the remote one.
    #[arg(long)]
    pub push: bool,
    /// Keep the route in the store across restarts.
    #[arg(long)]
    pub durable: bool,
}

/// `clacks agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The broker: amqp[s]://user:password@host:port/DOMAIN (the path names the domain).
    #[command(flatten)]
    pub conn: ConnArgs,
    /// A TOML file whose `[agent]` table holds the agent's settings (as for `serve`).
    #[arg(short, long, env = "CLACKS_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The domain (overrides the URL's path and the config).
    #[arg(long)]
    pub domain: Option<String>,
    /// This node's id (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// A broker identity of another agent whose forwarded calls are trusted (repeatable).
    #[arg(long, value_name = "IDENTITY")]
    pub trust: Vec<String>,
    /// A user who may call every command (repeatable; replaces the configured admins).
    #[arg(long, value_name = "USER")]
    pub admin: Vec<String>,
}

/// How an agent client command reaches the broker and the Clacks domain.
///
/// The URL comes from `--url`, else `CLACKS_URL` (or the older `CLACKS_BROKER`), else
/// `url` under `[client]` in the config file, else `amqp://127.0.0.1:5672`.
#[derive(Debug, Clone, Args)]
pub struct AgentConnArgs {
    /// Broker URL: amqp[s]://[user[:password]@]host[:port][/domain] (env CLACKS_URL or
    /// CLACKS_BROKER); without a password in it, a terminal is asked for one.
    #[arg(
        short = 'b',
        long = "url",
        visible_alias = "broker",
        value_name = "URL"
    )]
    pub url: Option<String>,
    /// TOML file whose [client] table gives `url` (and `domain`) when no URL is given.
    #[arg(long, env = "CLACKS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The Clacks domain (default: the URL's path, else org.clacks).
    #[arg(long, env = "CLACKS_DOMAIN")]
    pub domain: Option<String>,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Give up on a command after this many seconds without a reply.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,
}

/// `clacks call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
    /// Print the result as one line of JSON, and an error as the agent sent it (its record
    /// is left for get_error).
    #[arg(long)]
    pub json: bool,
    /// The command.
    pub method: String,
    /// Its arguments: each one JSON, or else taken as a string; KEY=VALUE arguments are
    /// named parameters (not to be mixed with positional ones; quote "a=b" as JSON to
    /// pass it as a string).
    #[arg(allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `clacks methods`.
#[derive(Debug, Args)]
pub struct MethodsArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
    /// Only the commands of this target (core, goto, ...).
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Print getMethods' map (of the --target's commands) as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

/// `clacks nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
    /// Print getNodes' map as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

/// `clacks queues`.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
    /// Measure rates over this many seconds (two samples) and show messages in and out
    /// per second.
    #[arg(long, value_name = "SECONDS")]
    pub rate: Option<f64>,
    /// Print listQueues' answer as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

/// `clacks events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
    /// Only events this XQuery selects (a whole query, as Clacks subscribers bind).
    #[arg(long, value_name = "XQUERY", conflicts_with = "types")]
    pub filter: Option<String>,
    /// Only events of this type, e.g. NodeStatus (repeatable: any of them).
    #[arg(long = "type", value_name = "NAME")]
    pub types: Vec<String>,
    /// Exit after this many events (default: until Ctrl-C).
    #[arg(short = 'm', long, value_name = "N")]
    pub count: Option<u64>,
    /// One line of JSON per event: {"type": ..., "xml": ...}.
    #[arg(long)]
    pub json: bool,
}

/// `clacks send-event`.
#[derive(Debug, Args)]
pub struct SendEventArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
    /// File with the event's XML, or - for stdin.
    pub file: PathBuf,
}

/// `clacks shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub conn: AgentConnArgs,
}

/// `clacks user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (password from stdin with --password-stdin, else made up and printed).
    Add(UserArgs),
    /// Change a user's password.
    Passwd(UserArgs),
    /// Remove a user.
    Del(UserNameArgs),
    /// List the users.
    List(DataDirArgs),
}

/// Where the users are kept.
#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// Data directory of the (stopped) broker.
    #[arg(
        long,
        env = "CLACKS_DATA_DIR",
        default_value = "./clacks-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
}

/// `clacks user add|passwd`.
#[derive(Debug, Args)]
pub struct UserArgs {
    /// User name (without realm).
    pub name: String,
    /// Read the password from the first line of stdin (default: make one up and print it).
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub dir: DataDirArgs,
}

/// `clacks user del`.
#[derive(Debug, Args)]
pub struct UserNameArgs {
    /// User name.
    pub name: String,
    #[command(flatten)]
    pub dir: DataDirArgs,
}

/// How a client command reaches the broker, logs in and secures its connection.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Broker URL: [amqp[s]://][user:password@]host[:port].
    #[arg(short = 'b', long, env = "CLACKS_BROKER", default_value = DEFAULT_BROKER)]
    pub broker: String,
    #[command(flatten)]
    pub login: LoginArgs,
}

/// How a client logs in and what it trusts: the SASL mechanism and the TLS files.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// SASL mechanism (PLAIN, SCRAM-SHA-256, EXTERNAL, ANONYMOUS); by default PLAIN with
    /// a user in the URL, EXTERNAL with a client certificate, else ANONYMOUS.
    #[arg(long, value_name = "MECH")]
    pub sasl_mechanism: Option<String>,
    /// CA certificates (PEM) to trust for amqps:// (default: the system's).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for amqps://, for SASL EXTERNAL.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl Command {
    /// The log level when RUST_LOG is not set: the broker says what it does, the client
    /// tools keep stderr for problems.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Serve(_) | Command::Agent(_) => "info",
            _ => "warn",
        }
    }
}

/// `clacks serve`: each flag overrides the environment and the config file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "CLACKS_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:5672 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Largest frame offered in connection.tune (4096-65535).
    #[arg(long, value_name = "BYTES")]
    pub max_frame_size: Option<u16>,
    /// Highest channel number offered in connection.tune.
    #[arg(long, value_name = "N")]
    pub channel_max: Option<u16>,
    /// Largest heartbeat interval accepted, in seconds (0: none).
    #[arg(long, value_name = "SECS")]
    pub heartbeat_max: Option<u16>,
    /// Check PLAIN passwords against the users (false: accept any, like qpidd --auth no).
    #[arg(long, value_name = "BOOL")]
    pub auth: Option<bool>,
    /// Offer the ANONYMOUS mechanism.
    #[arg(long, value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,
    /// SASL realm appended to user names.
    #[arg(long)]
    pub realm: Option<String>,
    /// Connections served at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Data directory for durable state (default ./clacks-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// A user seeded for this run, NAME=PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME=PASSWORD")]
    pub users: Vec<String>,
    /// Write the sender's identity into messages that carry no user-id.
    #[arg(long, value_name = "BOOL")]
    pub stamp_user_id: Option<bool>,
    /// ACL rules file (reloaded on SIGHUP).
    #[arg(long, value_name = "PATH")]
    pub acl_file: Option<String>,
    /// Address of the amqps (TLS) listener (default: the listen address's host, port 5671).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<String>,
}

/// `clacks send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Where to send: QUEUE, or EXCHANGE/ROUTING-KEY.
    pub address: String,
    /// Declare the queue first (QUEUE addresses).
    #[arg(long)]
    pub create: bool,
    /// How many messages; with --content the default is 1, from stdin every line is one
    /// message, up to this many.
    #[arg(short = 'm', long, value_name = "N")]
    pub count: Option<u64>,
    /// The message body; without it, each line of stdin is one message.
    #[arg(long, value_name = "TEXT")]
    pub content: Option<String>,
    /// Persistent messages (delivery-mode 2); with --create the queue is durable too.
    #[arg(long)]
    pub durable: bool,
    /// An application header, KEY=VALUE (repeatable; values are strings).
    #[arg(short = 'P', long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// message-properties content-type.
    #[arg(long, default_value = "text/plain")]
    pub content_type: String,
}

/// `clacks receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Where from: QUEUE, or EXCHANGE/BINDING-KEY (a private queue bound for the run).
    pub address: String,
    /// Declare the queue first (QUEUE addresses).
    #[arg(long)]
    pub create: bool,
    /// Stop after this many messages (default: no limit).
    #[arg(short = 'm', long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds without a message (default: wait forever).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Print the message properties before each body.
    #[arg(long)]
    pub print_headers: bool,
    /// Messages in flight from the broker at most (credit).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub capacity: u32,
}

/// `clacks bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Producer connections.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub producers: u32,
    /// Consumer connections.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub consumers: u32,
    /// Body size in bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub size: usize,
    /// Messages in total, shared among the producers.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub count: u64,
    /// Durable queue and persistent messages.
    #[arg(long)]
    pub durable: bool,
    /// Transfers in flight per producer before it waits for completions (larger windows
    /// queue messages up and show as latency, not as throughput).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub window: usize,
    /// Credit per consumer.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub capacity: u32,
    /// Give up when no message arrives for this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub idle_timeout: f64,
    /// Publish Clacks-style XML events through a fresh xml exchange with N bindings on the
    /// routing key, of which one matches (0: straight to the queue).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub xml_bindings: u32,
    /// Measure Clacks calls instead: `--count` calls of this command (no arguments) on the
    /// domain's core queue, from `--callers` connections with one call in flight each.
    #[arg(long, value_name = "METHOD")]
    pub rpc: Option<String>,
    /// Consume on this other broker (same login flags): producers send to `amq.direct`
    /// with key `clacks-bench`, and a federation route must bring those messages to the
    /// other broker's `amq.direct` (see the README).
    #[arg(long, value_name = "URL", conflicts_with_all = ["rpc", "xml_bindings"])]
    pub consume_from: Option<String>,
    /// Concurrent callers for `--rpc`.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub callers: u32,
    /// Send at this steady rate (messages per second, shared by the producers), as Qpid's
    /// latency test does; the latency line then shows the average too.
    #[arg(long, value_name = "MSGS_PER_SEC", conflicts_with_all = ["rpc", "perftest"])]
    pub rate: Option<f64>,
    /// Qpid's perftest pattern: producers stream without waiting (completions are awaited
    /// once, at the end), consumers take messages with accept-mode none and unlimited credit.
    #[arg(long, conflicts_with_all = ["rpc", "xml_bindings"])]
    pub perftest: bool,
    /// A grouped queue (`qpid.group_header_key`): messages spread over this many groups.
    #[arg(long, default_value_t = 0, value_name = "N", conflicts_with_all = ["rpc", "xml_bindings", "consume_from"])]
    pub groups: u32,
    /// Distributed transactions: each of --count branches publishes one message, then is
    /// ended, prepared and committed in two phases; prints branches per second.
    #[arg(long, conflicts_with_all = ["rpc", "xml_bindings", "consume_from", "groups"])]
    pub dtx: bool,
    /// Speak AMQP 0-9-1 (a streaming client of its own) instead of 0-10: the same producers,
    /// consumers and figures, to compare with a RabbitMQ on the same machine.
    #[arg(long, conflicts_with_all = ["rpc", "xml_bindings", "consume_from", "groups", "dtx", "perftest", "rate"])]
    pub amqp091: bool,
    /// With --amqp091: publisher confirms, at most --window unconfirmed per producer.
    #[arg(long, requires = "amqp091")]
    pub confirm: bool,
    /// The Clacks domain for `--rpc`.
    #[arg(long, env = "CLACKS_DOMAIN", default_value = "org.clacks")]
    pub domain: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks names, flags and groups of every subcommand only when asked.
    #[test]
    fn every_subcommand_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
