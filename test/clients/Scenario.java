// Scenario for the PostgreSQL JDBC driver (pgjdbc): what a transaction-pooling
// proxy must survive. Compiled and run by test/helpers/foreign-clients.ts:
//
//   javac -cp postgresql.jar -d DIR Scenario.java
//   java -cp postgresql.jar:DIR Scenario host port user database clientId [iterations]
//
// Prints `SCENARIO OK <clientId>` as its last line on success; on failure it
// prints the reason to stderr and exits non-zero. Every name it uses is
// suffixed with / keyed by clientId, so many copies can run concurrently
// against one database.
import java.io.StringReader;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public final class Scenario {
  private static final class ScenarioFailure extends RuntimeException {
    ScenarioFailure(String message) {
      super(message);
    }
  }

  private final String host;
  private final int port;
  private final String user;
  private final String database;
  private final int id;
  private final int iterations;
  private Connection conn;
  /** rows this client currently has in scen_items (our own bookkeeping) */
  private long expected = 0;
  private String step = "connect";

  private Scenario(String host, int port, String user, String database, int id, int iterations) {
    this.host = host;
    this.port = port;
    this.user = user;
    this.database = database;
    this.id = id;
    this.iterations = iterations;
  }

  public static void main(String[] args) {
    if (args.length < 5) {
      System.err.println("usage: Scenario host port user database clientId [iterations]");
      System.exit(2);
    }
    Scenario s;
    try {
      int iterations = args.length > 5 ? Integer.parseInt(args[5]) : 20;
      s = new Scenario(args[0], Integer.parseInt(args[1]), args[2], args[3], Integer.parseInt(args[4]), iterations);
    } catch (NumberFormatException e) {
      System.err.println("bad argument: " + e.getMessage());
      System.exit(2);
      return;
    }
    try {
      s.run();
    } catch (Throwable t) {
      System.err.println("SCENARIO FAILED " + s.id + " in step '" + s.step + "': " + describe(t));
      t.printStackTrace(System.err);
      System.exit(1);
    }
    System.out.println("SCENARIO OK " + s.id);
    System.exit(0);
  }

  private static String describe(Throwable t) {
    if (t instanceof SQLException) {
      SQLException e = (SQLException) t;
      return "SQLSTATE " + e.getSQLState() + ": " + e.getMessage();
    }
    return t.toString();
  }

  private static void check(boolean cond, String message) {
    if (!cond) throw new ScenarioFailure(message);
  }

  private void run() throws Exception {
    long t0 = System.nanoTime();
    String url = "jdbc:postgresql://" + host + ":" + port + "/" + database;
    Properties props = new Properties();
    props.setProperty("user", user);
    // named server-side statements from the first execution on
    props.setProperty("prepareThreshold", "1");
    props.setProperty("ApplicationName", "scen-jdbc-" + id);
    props.setProperty("connectTimeout", "10");
    conn = DriverManager.getConnection(url, props);
    conn.setAutoCommit(true);
    log("connect", t0);

    timed("setup", this::setup);
    timed("prepared", this::prepared);
    timed("error-in-transaction", this::errorInTransaction);
    timed("copy", this::copy);
    timed("cancel", this::cancel);
    timed("session-state", this::sessionState);
    timed("cleanup", this::cleanup);
    log("total", t0);
  }

  private interface Step {
    void run() throws Exception;
  }

  private void timed(String name, Step body) throws Exception {
    step = name;
    long t0 = System.nanoTime();
    body.run();
    log(name, t0);
  }

  private void log(String name, long t0) {
    System.out.println("step " + name + " ok (" + (System.nanoTime() - t0) / 1_000_000 + " ms)");
  }

  private long countOwn() throws SQLException {
    try (PreparedStatement ps = conn.prepareStatement("select count(*) from scen_items where client = ?")) {
      ps.setInt(1, id);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        return rs.getLong(1);
      }
    }
  }

  // 1. ------------------------------------------------------------------
  private void setup() throws SQLException {
    try (Statement st = conn.createStatement()) {
      try {
        st.execute("create table if not exists scen_items(client int, n int, note text)");
      } catch (SQLException e) {
        // concurrent "create table if not exists" race
        String state = e.getSQLState();
        if (!"23505".equals(state) && !"42P07".equals(state)) throw e;
      }
      st.executeUpdate("delete from scen_items where client = " + id);
    }
    expected = 0;
    check(countOwn() == 0, "own rows still present after delete");
  }

  // 2. ------------------------------------------------------------------
  private void prepared() throws SQLException {
    try (PreparedStatement ins = conn.prepareStatement("insert into scen_items values (?, ?, ?)");
        PreparedStatement cnt = conn.prepareStatement("select count(*) from scen_items where client = ?")) {
      for (int i = 1; i <= iterations; i++) {
        ins.setInt(1, id);
        ins.setInt(2, i);
        ins.setString(3, "prep-" + id + "-" + i);
        int n = ins.executeUpdate(); // autocommit: its own transaction
        check(n == 1, "prepared insert #" + i + " affected " + n + " rows");
        expected++;
        if (i % 3 == 0 || i == iterations) {
          cnt.setInt(1, id);
          try (ResultSet rs = cnt.executeQuery()) {
            check(rs.next(), "prepared count returned no row");
            long got = rs.getLong(1);
            check(got == expected, "prepared count after " + i + " inserts: got " + got + ", expected " + expected);
          }
        }
        if (i == 3) {
          check(ins.unwrap(PGStatement.class).isUseServerPrepare(), "insert is not using a server-side prepared statement");
          check(cnt.unwrap(PGStatement.class).isUseServerPrepare(), "count is not using a server-side prepared statement");
        }
      }
    }
  }

  // 3. ------------------------------------------------------------------
  private void errorInTransaction() throws SQLException {
    conn.setAutoCommit(false);
    try {
      try (PreparedStatement ins = conn.prepareStatement("insert into scen_items values (?, ?, ?)")) {
        ins.setInt(1, id);
        ins.setInt(2, -1);
        ins.setString(3, "doomed-" + id);
        ins.executeUpdate();
      }
      try (Statement st = conn.createStatement()) {
        st.executeQuery("select 1/0").close();
        throw new ScenarioFailure("select 1/0 did not fail");
      } catch (SQLException e) {
        check("22012".equals(e.getSQLState()), "select 1/0: expected SQLSTATE 22012, got " + describe(e));
      }
      conn.rollback();
      check(countOwn() == expected, "row inserted before the error survived the rollback");
      try (PreparedStatement ins = conn.prepareStatement("insert into scen_items values (?, ?, ?)")) {
        ins.setInt(1, id);
        ins.setInt(2, -2);
        ins.setString(3, "after-error-" + id);
        check(ins.executeUpdate() == 1, "insert after rollback failed");
      }
      conn.commit();
      expected++;
    } finally {
      if (!conn.getAutoCommit()) {
        try {
          conn.rollback();
        } catch (SQLException ignored) {
          // best effort
        }
        conn.setAutoCommit(true);
      }
    }
    long got = countOwn();
    check(got == expected, "after error + new transaction: got " + got + " rows, expected " + expected);
    try (PreparedStatement ps = conn.prepareStatement("select count(*) from scen_items where client = ? and n = ?")) {
      ps.setInt(1, id);
      ps.setInt(2, -1);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        check(rs.getLong(1) == 0, "rolled-back row is visible");
      }
      ps.setInt(2, -2);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        check(rs.getLong(1) == 1, "committed row after the error is missing");
      }
    }
  }

  // 4. ------------------------------------------------------------------
  private void copy() throws Exception {
    final int rows = 1000;
    CopyManager cm = conn.unwrap(PGConnection.class).getCopyAPI();
    StringBuilder sb = new StringBuilder(rows * 24);
    for (int i = 0; i < rows; i++) {
      sb.append(id).append('\t').append(100_000 + i).append('\t').append("copy-").append(id).append('-').append(i).append('\n');
    }
    long in = cm.copyIn("COPY scen_items FROM STDIN", new StringReader(sb.toString()));
    check(in == rows, "COPY FROM STDIN reported " + in + " rows, expected " + rows);
    expected += rows;
    long got = countOwn();
    check(got == expected, "after COPY IN: got " + got + " rows, expected " + expected);

    StringWriter out = new StringWriter();
    long outRows = cm.copyOut("COPY (select n from scen_items where client = " + id + " order by n) TO STDOUT", out);
    check(outRows == expected, "COPY TO STDOUT reported " + outRows + " rows, expected " + expected);
    String text = out.toString();
    long lines = text.isEmpty() ? 0 : text.split("\n", -1).length - 1;
    check(lines == expected, "COPY TO STDOUT produced " + lines + " lines, expected " + expected);
    check(text.endsWith("100999\n"), "COPY TO STDOUT: unexpected last row");
  }

  // 5. ------------------------------------------------------------------
  private void cancel() throws Exception {
    ScheduledExecutorService ex = Executors.newSingleThreadScheduledExecutor(r -> {
      Thread t = new Thread(r, "canceller");
      t.setDaemon(true);
      return t;
    });
    try (Statement st = conn.createStatement()) {
      ex.schedule(() -> {
        try {
          st.cancel();
        } catch (SQLException e) {
          System.err.println("cancel() failed: " + describe(e));
        }
        return null;
      }, 300, TimeUnit.MILLISECONDS);
      long t0 = System.nanoTime();
      try {
        st.executeQuery("select pg_sleep(30)").close();
        throw new ScenarioFailure("pg_sleep(30) was not cancelled");
      } catch (SQLException e) {
        check("57014".equals(e.getSQLState()), "pg_sleep: expected SQLSTATE 57014, got " + describe(e));
      }
      long ms = (System.nanoTime() - t0) / 1_000_000;
      check(ms < 10_000, "cancel took " + ms + " ms");
      System.out.println("cancelled after " + ms + " ms");
    } finally {
      ex.shutdownNow();
    }
    try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select 1")) {
      check(rs.next() && rs.getInt(1) == 1, "select 1 after cancel returned the wrong result");
    }
  }

  // 6. ------------------------------------------------------------------
  private void sessionState() throws SQLException {
    String channel = "scen_ch_" + id;
    String payload = "hello-" + id;
    try (Statement st = conn.createStatement()) {
      st.execute("LISTEN " + channel);
      st.execute("NOTIFY " + channel + ", '" + payload + "'");
      PGNotification[] notes = conn.unwrap(PGConnection.class).getNotifications(5000);
      check(notes != null && notes.length > 0, "no notification received within 5 s");
      boolean found = false;
      for (PGNotification n : notes) {
        if (channel.equals(n.getName()) && payload.equals(n.getParameter())) found = true;
      }
      check(found, "notification with payload '" + payload + "' not received (got " + notes.length + " others)");
      st.execute("UNLISTEN " + channel);

      String app = "scen-" + id;
      st.execute("SET application_name = '" + app + "'");
      try (ResultSet rs = st.executeQuery("SHOW application_name")) {
        check(rs.next(), "SHOW application_name returned no row");
        String got = rs.getString(1);
        check(app.equals(got), "SHOW application_name: got '" + got + "', expected '" + app + "'");
      }
    }
  }

  // 7. ------------------------------------------------------------------
  private void cleanup() throws SQLException {
    try (Statement st = conn.createStatement()) {
      int n = st.executeUpdate("delete from scen_items where client = " + id);
      check(n == expected, "cleanup deleted " + n + " rows, expected " + expected);
    }
    expected = 0;
    check(countOwn() == 0, "own rows still present after cleanup");
    conn.close();
  }
}
