package machida.flink;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.api.java.tuple.Tuple2;

/**
 * The application's TCP sinks. Each record is (sink index, bytes): the encoder's output for
 * one batch, already framed by the application. Every sink subtask keeps its own connection
 * to each sink address, as every machida worker did, and writes each record whole with one
 * write, so a record is in the kernel before the next checkpoint barrier passes.
 */
public final class FramedSocketSink implements Sink<Tuple2<Integer, byte[]>> {
    private static final long serialVersionUID = 1L;
    static final long RETRY_MS = 1000;
    static final long WAIT_NOTICE_MS = 10_000;

    private final String[] hosts;
    private final int[] ports;

    /** {@code addresses[i]} is sink i's "host:port". */
    public FramedSocketSink(String[] addresses) {
        hosts = new String[addresses.length];
        ports = new int[addresses.length];
        for (int i = 0; i < addresses.length; i++) {
            int colon = addresses[i].lastIndexOf(':');
            hosts[i] = addresses[i].substring(0, colon);
            ports[i] = Integer.parseInt(addresses[i].substring(colon + 1));
        }
    }

    @Override
    public SinkWriter<Tuple2<Integer, byte[]>> createWriter(WriterInitContext context) {
        return new Writer();
    }

    private final class Writer implements SinkWriter<Tuple2<Integer, byte[]>> {
        private final Socket[] sockets = new Socket[hosts.length];
        private final OutputStream[] outs = new OutputStream[hosts.length];

        @Override
        public void write(Tuple2<Integer, byte[]> record, Context context)
                throws IOException, InterruptedException {
            int sink = record.f0;
            byte[] data = record.f1;
            while (true) {
                OutputStream out = outs[sink] != null ? outs[sink] : connect(sink);
                try {
                    out.write(data);
                    return;
                } catch (IOException e) {
                    System.out.println("Sink at " + hosts[sink] + ":" + ports[sink]
                            + " lost (" + e.getMessage() + "); reconnecting");
                    System.out.flush();
                    drop(sink);
                }
            }
        }

        private OutputStream connect(int sink) throws IOException, InterruptedException {
            long lastNotice = System.currentTimeMillis();
            while (true) {
                Socket s = new Socket();
                try {
                    s.setTcpNoDelay(true);
                    s.connect(new InetSocketAddress(hosts[sink], ports[sink]), (int) RETRY_MS);
                    sockets[sink] = s;
                    outs[sink] = s.getOutputStream();
                    return outs[sink];
                } catch (IOException e) {
                    s.close();
                    long now = System.currentTimeMillis();
                    if (now - lastNotice >= WAIT_NOTICE_MS) {
                        System.out.println("Waiting for sink at " + hosts[sink] + ":" + ports[sink]);
                        System.out.flush();
                        lastNotice = now;
                    }
                    Thread.sleep(RETRY_MS);
                }
            }
        }

        private void drop(int sink) {
            try {
                if (sockets[sink] != null) {
                    sockets[sink].close();
                }
            } catch (IOException e) {
                // already broken
            }
            sockets[sink] = null;
            outs[sink] = null;
        }

        @Override
        public void flush(boolean endOfInput) throws IOException {
            for (OutputStream out : outs) {
                if (out != null) {
                    out.flush();
                }
            }
        }

        /** Ends every connection (a receiver sees EOF after the last record); the first
         * failure is thrown once all of them are closed. */
        @Override
        public void close() throws IOException {
            IOException first = null;
            for (int i = 0; i < sockets.length; i++) {
                if (sockets[i] != null) {
                    try {
                        sockets[i].shutdownOutput();
                    } catch (IOException e) {
                        if (first == null) {
                            first = e;
                        }
                    }
                    drop(i);
                }
            }
            if (first != null) {
                throw first;
            }
        }
    }
}
