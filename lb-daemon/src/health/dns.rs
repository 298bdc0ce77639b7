//! DNS check, over UDP or TCP: a query for `query` / `qtype` (hickory-proto builds and
//! reads the messages), up on an answer with RCODE NOERROR and, if `expect` is given, a
//! record that prints as it. A DNS service is checked by asking it, not by a TCP connect
//! to its port (the wrong-monitoring mistake of classic LVS sites).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr as _;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::{DnsCheck, DnsTransport};

pub async fn check(
    addr: SocketAddr,
    from: Option<IpAddr>,
    spec: &DnsCheck,
) -> Result<String, String> {
    let query = question(spec)?;
    let request = query.to_vec().map_err(|e| format!("encoding the query: {e}"))?;
    let answer = match spec.transport() {
        DnsTransport::Udp => super::udp::exchange(addr, from, &request).await?,
        DnsTransport::Tcp => over_tcp(addr, from, &request).await?,
    };
    let answer = Message::from_vec(&answer).map_err(|e| format!("bad DNS answer: {e}"))?;
    judge(&query, &answer, spec.expect.as_deref())
}

/// The query `spec` asks, recursion desired (a resolver behind the VIP answers it too).
pub fn question(spec: &DnsCheck) -> Result<Message, String> {
    let name = Name::from_ascii(&spec.query).map_err(|e| format!("query {:?}: {e}", spec.query))?;
    let qtype = RecordType::from_str(&spec.qtype).map_err(|e| format!("qtype: {e}"))?;
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, qtype));
    Ok(m)
}

/// RFC 1035 4.2.2: each message prefixed by its length in two bytes.
async fn over_tcp(
    addr: SocketAddr,
    from: Option<IpAddr>,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    let mut stream =
        super::connect(addr, from).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let len = u16::try_from(request.len()).map_err(|_| "query too long".to_string())?;
    let framed = [&len.to_be_bytes()[..], request].concat();
    stream.write_all(&framed).await.map_err(|e| format!("send to {addr}: {e}"))?;
    let n = stream.read_u16().await.map_err(|e| format!("read from {addr}: {e}"))?;
    let mut answer = vec![0u8; usize::from(n)];
    stream.read_exact(&mut answer).await.map_err(|e| format!("read from {addr}: {e}"))?;
    Ok(answer)
}

/// An answer to `query`: its own id, NOERROR, and `expect` among the records if given.
pub fn judge(query: &Message, answer: &Message, expect: Option<&str>) -> Result<String, String> {
    if answer.metadata.id != query.metadata.id {
        return Err(format!("answer to another query (id {})", answer.metadata.id));
    }
    let rcode = answer.metadata.response_code;
    if rcode != ResponseCode::NoError {
        return Err(format!("RCODE {rcode}"));
    }
    let records: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    match expect {
        Some(want) if !records.iter().any(|r| r.trim_matches('"') == want) => {
            Err(format!("no answer {want:?} among {records:?}"))
        }
        _ => Ok(format!("NOERROR, {} answers", records.len())),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::MessageType;
    use hickory_proto::rr::{RData, Record, rdata::A, rdata::TXT};

    use super::*;

    fn spec(qtype: &str, expect: Option<&str>) -> DnsCheck {
        DnsCheck {
            query: "whoami.lab".into(),
            qtype: qtype.into(),
            expect: expect.map(Into::into),
            transport: Some(DnsTransport::Udp),
        }
    }

    fn answer_to(q: &Message, rcode: ResponseCode, data: Vec<RData>) -> Message {
        let mut a = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
        a.metadata.response_code = rcode;
        for d in data {
            a.answers.push(Record::from_rdata(Name::from_ascii("whoami.lab").unwrap(), 60, d));
        }
        // Through the wire format, as the checker reads it.
        Message::from_vec(&a.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn noerror_with_the_expected_record_is_up() {
        let q = question(&spec("TXT", Some("real1"))).unwrap();
        let txt = RData::TXT(TXT::new(vec!["real1".into()]));
        assert!(
            judge(&q, &answer_to(&q, ResponseCode::NoError, vec![txt.clone()]), Some("real1"))
                .is_ok()
        );
        let e = judge(&q, &answer_to(&q, ResponseCode::NoError, vec![txt]), Some("real2"));
        assert!(e.unwrap_err().contains("no answer \"real2\""));
        let q = question(&spec("A", Some("192.0.2.1"))).unwrap();
        let a = RData::A(A(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(
            judge(&q, &answer_to(&q, ResponseCode::NoError, vec![a]), Some("192.0.2.1")).is_ok()
        );
    }

    #[test]
    fn other_rcodes_and_other_ids_are_down() {
        let q = question(&spec("A", None)).unwrap();
        let e = judge(&q, &answer_to(&q, ResponseCode::ServFail, vec![]), None).unwrap_err();
        assert!(e.starts_with("RCODE"), "{e}");
        assert!(judge(&q, &answer_to(&q, ResponseCode::NXDomain, vec![]), None).is_err());
        let mut other = answer_to(&q, ResponseCode::NoError, vec![]);
        other.metadata.id = q.metadata.id.wrapping_add(1);
        assert!(judge(&q, &other, None).unwrap_err().contains("another query"));
        // NOERROR without any answer is up when nothing is expected (NODATA).
        assert!(judge(&q, &answer_to(&q, ResponseCode::NoError, vec![]), None).is_ok());
    }
}
