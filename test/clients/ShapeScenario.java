// Prepared statements whose result shape changes under them, with the
// PostgreSQL JDBC driver (pgjdbc), server-prepared from the first use
// (prepareThreshold=1). Run by test/integration/shape.test.ts directly and
// through pgbudget; it prints one line per step (rows or SQLSTATE), and the
// two runs must print the same.
//
//   java -cp postgresql.jar:DIR ShapeScenario host port user database
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public final class ShapeScenario {
  public static void main(String[] args) throws Exception {
    String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/" + args[3];
    Properties props = new Properties();
    props.setProperty("user", args[2]);
    props.setProperty("prepareThreshold", "1");
    props.setProperty("sslmode", "disable");
    try (Connection a = DriverManager.getConnection(url, props);
        Connection admin = DriverManager.getConnection(url, props);
        Connection blocker = DriverManager.getConnection(url, props)) {
      try (Statement s = admin.createStatement()) {
        s.execute("create table t (x int, y int, z int)");
        s.execute("insert into t values (1, 2, 3)");
      }
      PreparedStatement ps = a.prepareStatement("select * from t where ?::int = 1");
      step("first run", ps);
      step("second run", ps);
      try (Statement s = admin.createStatement()) {
        s.execute("drop table t");
        s.execute("create table t (a int, b bool)");
        s.execute("insert into t values (2, true)");
      }
      // The blocker holds the only idle server connection: a's next transaction gets a fresh one.
      blocker.setAutoCommit(false);
      try (Statement s = blocker.createStatement()) {
        s.execute("select 1");
      }
      step("after the table was recreated", ps);
      step("once more", ps);
      blocker.commit();
      step("after the blocker left", ps);
      // Inside a transaction pgjdbc cannot prepare again and retry: the error reaches the application.
      try (Statement s = admin.createStatement()) {
        s.execute("drop table t");
        s.execute("create table t (c text)");
        s.execute("insert into t values ('three')");
      }
      a.setAutoCommit(false);
      step("in a transaction, after the table changed again", ps);
      step("the same transaction, next statement", ps);
      a.rollback();
      step("after the rollback", ps);
    }
  }

  private static void step(String label, PreparedStatement ps) {
    try {
      ps.setInt(1, 1);
      StringBuilder out = new StringBuilder(label + ":");
      try (ResultSet rs = ps.executeQuery()) {
        ResultSetMetaData md = rs.getMetaData();
        while (rs.next()) {
          out.append(" (");
          for (int i = 1; i <= md.getColumnCount(); i++) {
            out.append(i > 1 ? ", " : "").append(md.getColumnName(i)).append('=').append(rs.getString(i));
          }
          out.append(')');
        }
      }
      System.out.println(out);
    } catch (SQLException e) {
      System.out.println(label + ": " + e.getSQLState() + " " + e.getMessage());
    }
  }
}
