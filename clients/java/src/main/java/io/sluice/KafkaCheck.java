package io.sluice;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.Optional;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.DescribeProducersResult.PartitionProducerState;
import org.apache.kafka.clients.admin.ProducerState;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.LogTruncationException;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Kafka's Java client, the reference client, against Sluice's Kafka listener. Run by
 * tests/kafka.rs with the listener address. The admin client creates topics; an idempotent
 * snappy producer writes 100 keyed records with headers and prints where each key landed; a
 * group member reads them all and commits; a transactional consume-transform-produce with
 * sendOffsetsToTransaction writes them upper-cased (after an aborted transaction), and a
 * read_committed consumer reads exactly those back. Between them, the admin client alters
 * topic configs and describes producers, and positions with leader epochs are validated.
 * Prints one JSON line.
 */
public final class KafkaCheck {
    private static final int RECORDS = 100;

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        Map<String, Object> out = new TreeMap<>();

        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic("java-in", 3, (short) 1), new NewTopic("java-out", 2, (short) 1)))
                    .all().get(30, TimeUnit.SECONDS);
            out.put("topics", admin.listTopics().names().get(30, TimeUnit.SECONDS).contains("java-in"));

            // An idempotent producer (the default), snappy-compressed, keyed, with headers.
            Properties pp = new Properties();
            pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            pp.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "snappy");
            pp.put(ProducerConfig.LINGER_MS_CONFIG, 5);
            Map<String, Integer> partitionOf = new TreeMap<>();
            try (KafkaProducer<String, String> p = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
                List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>();
                for (int i = 0; i < RECORDS; i++) {
                    ProducerRecord<String, String> r = new ProducerRecord<>("java-in", "k" + i, "v" + i);
                    r.headers().add("n", Integer.toString(i).getBytes(StandardCharsets.UTF_8));
                    sent.add(p.send(r));
                }
                for (int i = 0; i < RECORDS; i++) {
                    partitionOf.put("k" + i, sent.get(i).get(30, TimeUnit.SECONDS).partition());
                }
            }
            out.put("partition_of", partitionOf);

            // A group member reads everything and commits.
            int consumed = 0;
            try (KafkaConsumer<String, String> c = consumer(bootstrap, "java-group", "read_uncommitted")) {
                c.subscribe(List.of("java-in"));
                long deadline = System.currentTimeMillis() + 60_000;
                while (consumed < RECORDS && System.currentTimeMillis() < deadline) {
                    consumed += c.poll(Duration.ofMillis(200)).count();
                }
                c.commitSync(Duration.ofSeconds(30));
            }
            out.put("group_consumed", consumed);
            ConsumerGroupDescription g =
                    admin.describeConsumerGroups(List.of("java-group")).all().get(30, TimeUnit.SECONDS).get("java-group");
            out.put("group_state", g.groupState().toString());
            long committed = 0;
            for (OffsetAndMetadata o : admin.listConsumerGroupOffsets("java-group").partitionsToOffsetAndMetadata()
                    .get(30, TimeUnit.SECONDS).values()) {
                committed += o.offset();
            }
            out.put("group_committed", committed);

            adminChecks(admin, out);
            truncationChecks(bootstrap, out);
            consumerProtocolChecks(bootstrap, admin, out);

            // Consume-transform-produce in transactions, after one that aborts.
            Properties tp = new Properties();
            tp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            tp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "java-tx");
            int transactions = 0;
            try (KafkaProducer<String, String> p = new KafkaProducer<>(tp, new StringSerializer(), new StringSerializer());
                 KafkaConsumer<String, String> c = consumer(bootstrap, "java-tx-group", "read_committed")) {
                p.initTransactions();
                p.beginTransaction();
                for (int i = 0; i < 5; i++) {
                    p.send(new ProducerRecord<>("java-out", "a" + i, "ABORTED-" + i));
                }
                p.flush();
                p.abortTransaction();
                c.subscribe(List.of("java-in"));
                int done = 0;
                long deadline = System.currentTimeMillis() + 60_000;
                while (done < RECORDS && System.currentTimeMillis() < deadline) {
                    ConsumerRecords<String, String> batch = c.poll(Duration.ofMillis(200));
                    if (batch.isEmpty()) {
                        continue;
                    }
                    p.beginTransaction();
                    Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                    for (ConsumerRecord<String, String> r : batch) {
                        p.send(new ProducerRecord<>("java-out", r.key(), r.value().toUpperCase()));
                        offsets.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                    }
                    p.sendOffsetsToTransaction(offsets, c.groupMetadata());
                    p.commitTransaction();
                    done += batch.count();
                    transactions++;
                }
            }
            out.put("transactions", transactions);

            // What read_committed readers see of the output.
            List<String> values = new ArrayList<>();
            try (KafkaConsumer<String, String> c = consumer(bootstrap, "java-reader", "read_committed")) {
                c.subscribe(List.of("java-out"));
                long deadline = System.currentTimeMillis() + 30_000;
                long quietSince = System.currentTimeMillis();
                while (System.currentTimeMillis() < deadline) {
                    ConsumerRecords<String, String> batch = c.poll(Duration.ofMillis(200));
                    for (ConsumerRecord<String, String> r : batch) {
                        values.add(r.value());
                        quietSince = System.currentTimeMillis();
                    }
                    if (values.size() >= RECORDS && System.currentTimeMillis() - quietSince > 1500) {
                        break;
                    }
                }
            }
            values.sort(null);
            out.put("committed_view", values);
            long txCommitted = 0;
            for (OffsetAndMetadata o : admin.listConsumerGroupOffsets("java-tx-group").partitionsToOffsetAndMetadata()
                    .get(30, TimeUnit.SECONDS).values()) {
                txCommitted += o.offset();
            }
            out.put("tx_group_committed", txCommitted);
        }
        System.out.println(json(out));
    }

    /**
     * Topic configs altered incrementally and read back (a bad value refused), and the
     * producers the idempotent producer above left on each partition.
     */
    private static void adminChecks(Admin admin, Map<String, Object> out) throws Exception {
        ConfigResource topic = new ConfigResource(ConfigResource.Type.TOPIC, "java-in");
        admin.incrementalAlterConfigs(Map.of(topic, List.of(
                new AlterConfigOp(new ConfigEntry("retention.ms", "3600000"), AlterConfigOp.OpType.SET),
                new AlterConfigOp(new ConfigEntry("cleanup.policy", "compact"), AlterConfigOp.OpType.APPEND))))
                .all().get(30, TimeUnit.SECONDS);
        Config config = admin.describeConfigs(List.of(topic)).all().get(30, TimeUnit.SECONDS).get(topic);
        out.put("altered_retention", config.get("retention.ms").value());
        out.put("altered_policy", config.get("cleanup.policy").value());
        try {
            admin.incrementalAlterConfigs(Map.of(topic, List.of(
                    new AlterConfigOp(new ConfigEntry("retention.ms", "soon"), AlterConfigOp.OpType.SET))))
                    .all().get(30, TimeUnit.SECONDS);
            out.put("bad_config", "accepted");
        } catch (ExecutionException e) {
            out.put("bad_config", e.getCause().getClass().getSimpleName());
        }
        admin.incrementalAlterConfigs(Map.of(topic, List.of(
                new AlterConfigOp(new ConfigEntry("cleanup.policy", ""), AlterConfigOp.OpType.DELETE))))
                .all().get(30, TimeUnit.SECONDS);
        config = admin.describeConfigs(List.of(topic)).all().get(30, TimeUnit.SECONDS).get(topic);
        out.put("restored_policy", config.get("cleanup.policy").value());

        List<TopicPartition> parts = List.of(new TopicPartition("java-in", 0), new TopicPartition("java-in", 1),
                new TopicPartition("java-in", 2));
        Map<Long, Integer> producers = new TreeMap<>();
        for (PartitionProducerState s : admin.describeProducers(parts).all().get(30, TimeUnit.SECONDS).values()) {
            for (ProducerState p : s.activeProducers()) {
                producers.merge(p.producerId(), 1, Integer::sum);
                out.put("producer_epoch", p.producerEpoch());
                out.put("producer_open_txn", p.currentTransactionStartOffset().isPresent());
            }
        }
        out.put("producers", new ArrayList<>(producers.values()));
    }

    /**
     * Positions carrying a leader epoch are validated against the log (OffsetForLeaderEpoch)
     * before fetching: one inside the log reads on, one past its end is reported as truncation.
     */
    private static void truncationChecks(String bootstrap, Map<String, Object> out) {
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "none");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        TopicPartition tp = new TopicPartition("java-in", 0);
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
            c.assign(List.of(tp));
            c.seekToBeginning(List.of(tp));
            Optional<Integer> epoch = Optional.empty();
            long deadline = System.currentTimeMillis() + 30_000;
            while (epoch.isEmpty() && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) {
                    epoch = r.leaderEpoch();
                }
            }
            out.put("record_epoch", epoch.orElse(-1));
            long end = c.endOffsets(List.of(tp)).get(tp);
            c.seek(tp, new OffsetAndMetadata(1, epoch, ""));
            int validated = 0;
            deadline = System.currentTimeMillis() + 30_000;
            while (validated == 0 && System.currentTimeMillis() < deadline) {
                validated += c.poll(Duration.ofMillis(200)).count();
            }
            out.put("validated_read", validated);
            c.seek(tp, new OffsetAndMetadata(end + 5, epoch, ""));
            String truncation = "none";
            deadline = System.currentTimeMillis() + 30_000;
            while (truncation.equals("none") && System.currentTimeMillis() < deadline) {
                try {
                    c.poll(Duration.ofMillis(200));
                } catch (LogTruncationException e) {
                    OffsetAndMetadata at = e.divergentOffsets().get(tp);
                    truncation = at == null ? "unknown" : Long.toString(at.offset() - end);
                }
            }
            out.put("truncation_from_end", truncation);
        }
    }

    /**
     * KIP-848's consumer protocol (group.protocol=consumer): two members split the three
     * partitions of a new topic and read what is produced then, committing it; the second
     * leaves and the first takes everything over from the committed offsets, reading what
     * comes next.
     */
    private static void consumerProtocolChecks(String bootstrap, Admin admin, Map<String, Object> out) throws Exception {
        admin.createTopics(List.of(new NewTopic("java-848", 3, (short) 1))).all().get(30, TimeUnit.SECONDS);
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        KafkaProducer<String, String> producer = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer());
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, "java-848");
        cp.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "consumer");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        Map<String, String> seen = new HashMap<>();
        int twice = 0;
        boolean split = false;
        int maxMembers = 0;
        try (KafkaConsumer<String, String> a = new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
            a.subscribe(List.of("java-848"));
            try (KafkaConsumer<String, String> b = new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
                b.subscribe(List.of("java-848"));
                long deadline = System.currentTimeMillis() + 60_000;
                while (!split && System.currentTimeMillis() < deadline) {
                    twice += read(a, "a", seen) + read(b, "b", seen);
                    split = !a.assignment().isEmpty() && !b.assignment().isEmpty()
                            && a.assignment().size() + b.assignment().size() == 3;
                }
                produce(producer, 0, RECORDS);
                while (seen.size() < RECORDS && System.currentTimeMillis() < deadline) {
                    twice += read(a, "a", seen) + read(b, "b", seen);
                }
                ConsumerGroupDescription g =
                        admin.describeConsumerGroups(List.of("java-848")).all().get(30, TimeUnit.SECONDS).get("java-848");
                maxMembers = g.members().size();
                b.commitSync(Duration.ofSeconds(30));
            }
            produce(producer, RECORDS, RECORDS + RECORDS / 2);
            long deadline = System.currentTimeMillis() + 60_000;
            while ((seen.size() < RECORDS + RECORDS / 2 || a.assignment().size() < 3)
                    && System.currentTimeMillis() < deadline) {
                twice += read(a, "a", seen);
            }
            a.commitSync(Duration.ofSeconds(30));
            out.put("cp_a_partitions", a.assignment().size());
        }
        out.put("cp_split", split);
        out.put("cp_members", maxMembers);
        out.put("cp_seen", seen.size());
        out.put("cp_by_b", seen.values().stream().filter("b"::equals).count());
        out.put("cp_twice", twice);
        long committed = 0;
        for (OffsetAndMetadata o : admin.listConsumerGroupOffsets("java-848").partitionsToOffsetAndMetadata()
                .get(30, TimeUnit.SECONDS).values()) {
            committed += o.offset();
        }
        out.put("cp_committed", committed);
        producer.close();
    }

    private static void produce(KafkaProducer<String, String> p, int from, int to) throws Exception {
        for (int i = from; i < to; i++) {
            p.send(new ProducerRecord<>("java-848", "c" + i, "v" + i));
        }
        p.flush();
    }

    /** Polls once, noting who read each key; returns how many were read again. */
    private static int read(KafkaConsumer<String, String> c, String name, Map<String, String> seen) {
        int again = 0;
        for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(100))) {
            if (seen.put(r.key(), name) != null) {
                again++;
            }
        }
        c.commitSync(Duration.ofSeconds(30));
        return again;
    }

    private static KafkaConsumer<String, String> consumer(String bootstrap, String group, String isolation) {
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        return new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer());
    }

    /** A JSON text for maps, lists, strings, numbers and booleans. */
    private static String json(Object v) {
        if (v instanceof Map<?, ?> m) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (b.length() > 1) {
                    b.append(',');
                }
                b.append(json(e.getKey().toString())).append(':').append(json(e.getValue()));
            }
            return b.append('}').toString();
        }
        if (v instanceof List<?> l) {
            StringBuilder b = new StringBuilder("[");
            for (Object o : l) {
                if (b.length() > 1) {
                    b.append(',');
                }
                b.append(json(o));
            }
            return b.append(']').toString();
        }
        if (v instanceof String s) {
            return '"' + s.replace("\\", "\\\\").replace("\"", "\\\"") + '"';
        }
        return String.valueOf(v);
    }
}
