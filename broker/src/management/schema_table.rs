//! The table of classes the broker's QMF agent reports: qpidd's package
//! `org.apache.qpid.broker`, its classes, properties, statistics, methods and events, by
//! their names and types (descriptions left out).

/// The schema, one declaration per line:
///
/// ```text
/// class NAME                       an object class
/// p NAME TYPE ACCESS [flags]       a property; flags: index optional ref=CLASS
/// s NAME TYPE [unit=U]             a statistic (hilo32 adds NAMEHigh and NAMELow)
/// m NAME                           a method of the class above
/// a NAME DIR TYPE [default=V]      an argument of the method above
/// event NAME SEVERITY ARG,ARG,...  an event class; its arguments' types come from `arg`
/// arg NAME TYPE                    the type of an event argument
/// ```
pub const SCHEMA: &str = "
class system
p systemId uuid RC index
p osName sstr RO
p nodeName sstr RO
p release sstr RO
p version sstr RO
p machine sstr RO

class memory
p name sstr RC index
p malloc_arena uint64 RO optional
p malloc_ordblks uint64 RO optional
p malloc_hblks uint64 RO optional
p malloc_hblkhd uint64 RO optional
p malloc_uordblks uint64 RO optional
p malloc_fordblks uint64 RO optional
p malloc_keepcost uint64 RO optional

class broker
p name sstr RC index
p systemRef objId RO ref=system
p port uint16 RO
p workerThreads uint16 RO
p maxConns uint16 RO
p connBacklog uint16 RO
p stagingThreshold uint32 RO
p mgmtPublish bool RO
p mgmtPubInterval uint16 RW
p version sstr RO
p dataDir lstr RO optional
s uptime deltaTime
s queueCount count64 unit=queue
s msgTotalEnqueues count64 unit=message
s msgTotalDequeues count64 unit=message
s byteTotalEnqueues count64 unit=octet
s byteTotalDequeues count64 unit=octet
s msgDepth count64 unit=message
s byteDepth count64 unit=octet
s msgPersistEnqueues count64 unit=message
s msgPersistDequeues count64 unit=message
s bytePersistEnqueues count64 unit=octet
s bytePersistDequeues count64 unit=octet
s msgTxnEnqueues count64 unit=message
s msgTxnDequeues count64 unit=message
s byteTxnEnqueues count64 unit=octet
s byteTxnDequeues count64 unit=octet
s msgFtdEnqueues count64 unit=message
s msgFtdDequeues count64 unit=message
s byteFtdEnqueues count64 unit=octet
s byteFtdDequeues count64 unit=octet
s msgFtdDepth count64 unit=message
s byteFtdDepth count64 unit=octet
s releases count64 unit=message
s acquires count64 unit=message
s discardsNoRoute count64 unit=message
s discardsTtl count64 unit=message
s discardsRing count64 unit=message
s discardsLvq count64 unit=message
s discardsOverflow count64 unit=message
s discardsSubscriber count64 unit=message
s discardsPurge count64 unit=message
s reroutes count64 unit=message
s abandoned count64 unit=message
s abandonedViaAlt count64 unit=message
m echo
a sequence IO uint32
a body IO lstr
m connect
a host I sstr
a port I uint32
a durable I bool
a authMechanism I sstr
a username I sstr
a password I sstr
a transport I sstr
m queueMoveMessages
a srcQueue I sstr
a destQueue I sstr
a qty I uint32
a filter I map
m setLogLevel
a level I sstr
m getLogLevel
a level O sstr
m getTimestampConfig
a receive O bool
m setTimestampConfig
a receive I bool
m create
a type I sstr
a name I sstr
a properties I map
a strict I bool
m delete
a type I sstr
a name I sstr
a options I map
m query
a type I sstr
a name I sstr
a results O map
m getLogHiresTimestamp
a logHires O bool
m setLogHiresTimestamp
a logHires I bool
m queueRedirect
a sourceQueue I sstr
a targetQueue I sstr
m shutdown

class agent
p connectionRef objId RO index ref=connection
p label sstr RO
p registeredTo objId RO ref=broker
p systemId uuid RO
p brokerBank uint32 RO
p agentBank uint32 RO

class vhost
p brokerRef objId RC index ref=broker
p name sstr RC index
p federationTag sstr RO

class queue
p vhostRef objId RC index ref=vhost
p name sstr RC index
p durable bool RC
p autoDelete bool RC
p exclusive bool RO
p arguments map RO
p altExchange objId RO optional ref=exchange
s msgTotalEnqueues count64 unit=message
s msgTotalDequeues count64 unit=message
s msgTxnEnqueues count64 unit=message
s msgTxnDequeues count64 unit=message
s msgPersistEnqueues count64 unit=message
s msgPersistDequeues count64 unit=message
s msgDepth count64 unit=message
s byteDepth count64 unit=octet
s byteTotalEnqueues count64 unit=octet
s byteTotalDequeues count64 unit=octet
s byteTxnEnqueues count64 unit=octet
s byteTxnDequeues count64 unit=octet
s bytePersistEnqueues count64 unit=octet
s bytePersistDequeues count64 unit=octet
s msgFtdEnqueues count64 unit=message
s msgFtdDequeues count64 unit=message
s byteFtdEnqueues count64 unit=octet
s byteFtdDequeues count64 unit=octet
s msgFtdDepth count64 unit=message
s byteFtdDepth count64 unit=octet
s releases count64 unit=message
s acquires count64 unit=message
s discardsTtl count64 unit=message
s discardsRing count64 unit=message
s discardsLvq count64 unit=message
s discardsOverflow count64 unit=message
s discardsSubscriber count64 unit=message
s discardsPurge count64 unit=message
s reroutes count64 unit=message
s consumerCount hilo32 unit=consumer
s bindingCount hilo32 unit=binding
s unackedMessages hilo32 unit=message
s messageLatency mmaTime unit=nanosecond
s flowStopped bool
s flowStoppedCount count32
s redirectPeer sstr
s redirectSource bool
s creator sstr
m purge
a request I uint32
a filter I map
m reroute
a request I uint32
a useAltExchange I bool
a exchange I sstr
a filter I map

class exchange
p vhostRef objId RC index ref=vhost
p name sstr RC index
p type sstr RO
p durable bool RO
p autoDelete bool RO
p altExchange objId RO optional ref=exchange
p arguments map RO
s producerCount hilo32
s bindingCount hilo32
s msgReceives count64
s msgDrops count64
s msgRoutes count64
s byteReceives count64
s byteDrops count64
s byteRoutes count64

class binding
p exchangeRef objId RC index ref=exchange
p queueRef objId RC index ref=queue
p bindingKey lstr RC index
p arguments map RC
p origin sstr RO optional
s msgMatched count64

class subscription
p sessionRef objId RC index ref=session
p queueRef objId RC index ref=queue
p name sstr RC index
p browsing bool RC
p acknowledged bool RC
p exclusive bool RC
p creditMode sstr RO
p arguments map RC
s delivered count64 unit=message

class connection
p vhostRef objId RC index ref=vhost
p address sstr RC index
p incoming bool RC
p SystemConnection bool RC
p userProxyAuth bool RO
p federationLink bool RO
p authIdentity sstr RO
p remoteProcessName lstr RO optional
p remotePid uint32 RO optional
p remoteParentPid uint32 RO optional
p shadow bool RO
p saslMechanism sstr RO
p saslSsf uint16 RO
p remoteProperties map RO
p protocol sstr RC
s closing bool
s framesFromClient count64
s framesToClient count64
s bytesFromClient count64
s bytesToClient count64
s msgsFromClient count64
s msgsToClient count64
m close

class link
p vhostRef objId RC index ref=vhost
p name sstr RC index
p host sstr RO
p port uint16 RO
p transport sstr RO
p durable bool RC
p connectionRef objId RO ref=connection
s state sstr
s lastError lstr
m close
m bridge
a durable I bool
a src I sstr
a dest I sstr
a key I lstr
a tag I sstr
a excludes I sstr
a srcIsQueue I bool
a srcIsLocal I bool
a dynamic I bool
a sync I uint16
a credit I uint32 default=0xFFFFFFFF

class bridge
p linkRef objId RC index ref=link
p name sstr RC index
p channelId uint16 RO
p durable bool RC
p src sstr RC
p dest sstr RC
p key lstr RC
p srcIsQueue bool RC
p srcIsLocal bool RC
p tag sstr RC
p excludes sstr RC
p dynamic bool RC
p sync uint16 RC
p credit uint32 RC
m close

class session
p vhostRef objId RC index ref=vhost
p name sstr RC index
p fullName lstr RO optional
p channelId uint16 RO
p connectionRef objId RO ref=connection
p detachedLifespan uint32 RO
p attached bool RO
p expireTime absTime RO optional
p maxClientRate uint32 RO optional
s unackedMessages uint64 unit=message
s TxnStarts count64 unit=transaction
s TxnCommits count64 unit=transaction
s TxnRejects count64 unit=transaction
s TxnCount count32 unit=transaction
s clientCredit count32 unit=message
s framesOutstanding count32
m solicitAck
m detach
m resetLifespan
m close

arg altEx sstr
arg args map
arg autoDel bool
arg dest sstr
arg disp sstr
arg durable bool
arg exName sstr
arg exType sstr
arg excl bool
arg key lstr
arg qName sstr
arg reason lstr
arg rhost sstr
arg user sstr
arg qTarget sstr
arg msgDepth count64
arg byteDepth count64
arg properties map

event clientConnect 6 rhost,user,properties
event clientConnectFail 4 rhost,user,reason,properties
event clientDisconnect 6 rhost,user,properties
event brokerLinkUp 6 rhost
event brokerLinkDown 4 rhost
event queueDeclare 6 rhost,user,qName,durable,excl,autoDel,altEx,args,disp
event queueDelete 6 rhost,user,qName
event exchangeDeclare 6 rhost,user,exName,exType,altEx,durable,autoDel,args,disp
event exchangeDelete 6 rhost,user,exName
event bind 6 rhost,user,exName,qName,key,args
event unbind 6 rhost,user,exName,qName,key
event subscribe 6 rhost,user,qName,dest,excl,args
event unsubscribe 6 rhost,user,dest
event queueThresholdCrossedUpward 6 qName,msgDepth,byteDepth
event queueThresholdCrossedDownward 6 qName,msgDepth,byteDepth
event queueThresholdExceeded 4 qName,msgDepth,byteDepth
";
