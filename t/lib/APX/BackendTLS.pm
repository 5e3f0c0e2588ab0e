package APX::BackendTLS;

# APX::Backend over TLS, and over a Unix socket (APX::BackendUnix below):
# the same scripted backend (handlers, request log, connections), its
# transport changed underneath.
#
#   my $b = APX::BackendTLS->new(cert => "$d/srv.crt", key => "$d/srv.key",
#                                handler => sub { ... });
#   my @h = $b->handshakes;   # one per accepted connection, in order:
#                             # { conn_id, ok, reused, sni, version, error }
#
#   my $u = APX::BackendUnix->new(path => "$d/app.sock", handler => ...);
#
# The TLS context is made once, before the listener forks, so every
# connection process shares its session-ticket key and a client's session
# from one connection resumes on the next (what the proxy's resumption is
# checked against). A handshake the client breaks off (a certificate it
# refused) is logged with ok => 0 and the connection process ends.
#
# make_certs($dir) writes, with the openssl CLI, a CA (ca.crt), a server
# certificate it signed for localhost / 127.0.0.1 (srv.crt, srv.key) and a
# self-signed one for the same names (self.crt, self.key).

use strict;
use warnings;
use parent -norequire, 'APX::Backend';
use APX::Backend;
use IO::Socket::SSL;
use POSIX ();

our $NEXT_CTX;      # the context the listener about to be forked inherits

sub new {
    my ($class, %o) = @_;
    my ($cert, $key) = delete @o{qw(cert key)};
    my $ctx = IO::Socket::SSL::SSL_Context->new(
        SSL_server => 1, SSL_cert_file => $cert, SSL_key_file => $key)
        or die "APX::BackendTLS: context: " . IO::Socket::SSL::errstr();
    local $NEXT_CTX = $ctx;
    my $self = $class->SUPER::new(%o);
    $self->{tls_ctx} = $ctx;
    return $self;
}

sub handshakes {
    my ($self) = @_;
    return sort { $a->{conn_id} <=> $b->{conn_id} }
           grep { $_->{type} eq 'tls' } $self->_log_read;
}

# connection process: the handshake, then the plain backend's loop on the
# TLS socket
sub _connection {
    my ($self, $sock, $id) = @_;
    my $ctx = $self->{tls_ctx} // $NEXT_CTX;
    my $ssl = IO::Socket::SSL->start_SSL($sock, SSL_server => 1, SSL_reuse_ctx => $ctx,
                                         Timeout => 30);
    if (!$ssl) {
        $self->_log_write(type => 'tls', conn_id => $id, ok => 0,
                          error => "" . ($IO::Socket::SSL::SSL_ERROR // 'unknown'));
        POSIX::_exit(0);
    }
    $self->_log_write(type => 'tls', conn_id => $id, ok => 1,
                      reused => ($ssl->get_session_reused ? 1 : 0),
                      sni => ($ssl->get_servername // ''), version => $ssl->get_sslversion);
    return $self->SUPER::_connection($ssl, $id);
}

# decrypted bytes waiting in the TLS socket are invisible to select()
sub _fill {
    my ($self, $c, $buf) = @_;
    if ($c->{sock}->can('pending') && $c->{sock}->pending) {
        my $n = sysread($c->{sock}, $$buf, 65536, length $$buf);
        return $n // 0;
    }
    return $self->SUPER::_fill($c, $buf);
}

sub make_certs {
    my ($d) = @_;
    my $run = sub {
        my ($cmd) = @_;
        system("$cmd >/dev/null 2>&1") == 0 or die "openssl failed: $cmd";
    };
    open my $fh, '>', "$d/san.ext" or die;
    print $fh "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            . "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            . "extendedKeyUsage=serverAuth\n";
    close $fh;
    $run->("openssl req -x509 -newkey rsa:2048 -nodes -keyout $d/ca.key -out $d/ca.crt "
         . "-days 2 -subj '/CN=APX test CA' -addext basicConstraints=critical,CA:TRUE "
         . "-addext keyUsage=critical,keyCertSign,cRLSign");
    $run->("openssl req -newkey rsa:2048 -nodes -keyout $d/srv.key -out $d/srv.csr "
         . "-subj /CN=localhost");
    $run->("openssl x509 -req -in $d/srv.csr -CA $d/ca.crt -CAkey $d/ca.key -CAcreateserial "
         . "-out $d/srv.crt -days 2 -extfile $d/san.ext");
    $run->("openssl req -x509 -newkey rsa:2048 -nodes -keyout $d/self.key -out $d/self.crt "
         . "-days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1");
    chmod 0644, map { "$d/$_" } qw(ca.crt srv.crt srv.key self.crt self.key);
    return { ca => "$d/ca.crt", cert => "$d/srv.crt", key => "$d/srv.key",
             self_cert => "$d/self.crt", self_key => "$d/self.key" };
}

package APX::BackendUnix;

# APX::Backend on a Unix socket: path => FILE (its directory must exist);
# the socket is made by the listener process, mode 0666 so that httpd's
# children (www-data) may connect; new() returns once it exists.

use strict;
use warnings;
use parent -norequire, 'APX::Backend';
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(sleep time);

our $NEXT_PATH;

sub new {
    my ($class, %o) = @_;
    my $path = delete $o{path} or die "APX::BackendUnix: path => FILE";
    unlink $path;
    local $NEXT_PATH = $path;
    my $self = $class->SUPER::new(%o);
    $self->{path} = $path;
    my $end = time + 10;
    sleep 0.02 until -S $path || time > $end;
    die "APX::BackendUnix: $path did not appear" unless -S $path;
    return $self;
}

sub path { $_[0]{path} }

# listener process: the TCP socket APX::Backend made is replaced
sub _listener {
    my ($self, $ls, $rd, $test_pid) = @_;
    close $ls;
    my $u = APX::UnixSocket->new(Type => SOCK_STREAM, Local => $NEXT_PATH, Listen => 128)
        or die "APX::BackendUnix: listen on $NEXT_PATH: $!";
    chmod 0666, $NEXT_PATH;
    return $self->SUPER::_listener($u, $rd, $test_pid);
}

package APX::UnixSocket;
# accepted sockets are of the listener's class: a peer port of 0 for the log
use parent -norequire, 'IO::Socket::UNIX';
sub peerport { 0 }

1;
