package APX::WS;

# A minimal RFC 6455 framer for the tunnel tests: the handshake key, frames
# (masked from clients, unmasked from servers), and a blocking reader that
# works on plain and IO::Socket::SSL sockets. Enough for an echo backend and
# a test client: text, binary, ping/pong, close; no extensions, no
# fragmentation on send (a fragmented message is reassembled on read).
# Frames are written with APX::Client's send_raw.

use strict;
use warnings;
use Digest::SHA qw(sha1);
use MIME::Base64 qw(encode_base64);
use APX::Client qw(can_read);
use Time::HiRes qw(time);
use Exporter 'import';

our @EXPORT_OK = qw(ws_accept ws_key ws_frame ws_parse ws_read_frame
                    OP_TEXT OP_BINARY OP_CLOSE OP_PING OP_PONG);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

use constant { OP_CONT => 0, OP_TEXT => 1, OP_BINARY => 2, OP_CLOSE => 8,
               OP_PING => 9, OP_PONG => 10 };

sub ws_accept {
    my ($key) = @_;
    my $a = encode_base64(sha1($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'), '');
    return $a;
}

sub ws_key { encode_base64(join('', map { chr int rand 256 } 1 .. 16), '') }

# One frame, FIN set; masked when $mask (clients must mask).
sub ws_frame {
    my ($op, $payload, $mask) = @_;
    my $len = length $payload;
    my $h = chr(0x80 | $op);
    my $m = $mask ? 0x80 : 0;
    if ($len < 126) { $h .= chr($m | $len) }
    elsif ($len < 65536) { $h .= chr($m | 126) . pack('n', $len) }
    else { $h .= chr($m | 127) . pack('Q>', $len) }
    return $h . $payload unless $mask;
    my $k = join '', map { chr int rand 256 } 1 .. 4;
    my $masked = $payload ^ (substr($k x (int($len / 4) + 1), 0, $len));
    return $h . $k . $masked;
}

# Takes one frame off the front of $$buf: (fin, op, payload), or () when
# the buffer holds no whole frame yet.
sub ws_parse {
    my ($buf) = @_;
    return () if length $$buf < 2;
    my ($b0, $b1) = unpack('CC', $$buf);
    my $len = $b1 & 0x7f;
    my $off = 2;
    if ($len == 126) { return () if length $$buf < 4; $len = unpack('n', substr($$buf, 2, 2)); $off = 4 }
    elsif ($len == 127) { return () if length $$buf < 10; $len = unpack('Q>', substr($$buf, 2, 8)); $off = 10 }
    my $k;
    if ($b1 & 0x80) { return () if length $$buf < $off + 4; $k = substr($$buf, $off, 4); $off += 4 }
    return () if length $$buf < $off + $len;
    my $p = substr($$buf, $off, $len);
    substr($$buf, 0, $off + $len, '');
    $p ^= substr($k x (int($len / 4) + 1), 0, $len) if defined $k;
    return (($b0 & 0x80) ? 1 : 0, $b0 & 0x0f, $p);
}

# Reads one whole message (fragments joined): (op, payload), ('eof') when
# the peer closed, ('timeout') when none came within $timeout s.
sub ws_read_frame {
    my ($s, $buf, $timeout) = @_;
    my $end = time + ($timeout // 10);
    my ($op, $msg);
    while (1) {
        while (my ($fin, $o, $p) = ws_parse($buf)) {
            if ($o >= 8) { return ($o, $p) }          # control frames stand alone
            $op = $o if $o != 0;
            $msg .= $p;
            return ($op, $msg) if $fin;
        }
        my $left = $end - time;
        return ('timeout') if $left <= 0;
        next unless can_read($s, $left);
        my $n = sysread($s, $$buf, 262144, length $$buf);
        next if !defined $n && ($!{EAGAIN} || $!{EINTR});
        return ('eof') if !$n;
    }
}

1;
