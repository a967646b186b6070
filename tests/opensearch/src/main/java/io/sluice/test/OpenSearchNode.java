package io.sluice.test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

/**
 * One real OpenSearch node for tests: single-node discovery on loopback, the netty4 HTTP and
 * transport plugin taken from the classpath (as OpenSearch's own test framework does, since a
 * distribution's plugins directory is not there). Arguments: home directory, HTTP port,
 * transport port. Prints "ready" once the node has started; stops on SIGTERM or when its
 * standard input closes (so it never outlives the test that started it).
 */
public final class OpenSearchNode {
    /** Node's constructor taking classpath plugins is protected. */
    static final class ClasspathNode extends Node {
        ClasspathNode(Environment env) {
            super(env, List.of(Netty4Plugin.class), true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: OpenSearchNode HOME HTTP_PORT TRANSPORT_PORT");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        Files.createDirectories(home.resolve("config"));
        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "sluice-test")
            .put("node.name", "node-1")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", args[1])
            .put("transport.port", args[2])
            // The test machine's disk may be nearly full: no shard is refused for it.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.auto_create_index", true)
            .build();
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), home.resolve("config"), () -> "node-1");
        Node node = new ClasspathNode(env);
        node.start();
        System.out.println("ready");
        System.out.flush();
        CountDownLatch stop = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        Thread stdin = new Thread(() -> {
            try {
                while (System.in.read() != -1) {
                    // Nothing is expected on stdin: its end is the signal.
                }
            } catch (Exception ignored) {
                // Closed either way.
            }
            stop.countDown();
        });
        stdin.setDaemon(true);
        stdin.start();
        stop.await();
        System.exit(0);
    }
}
